"""The one place that finds and loads models. Every stage goes through it:

- `reference`: what a reference names (built-in alias, local folder, hub id, run, run/finetune, run/export), resolved
  on disk without loading weights;
- `kinds`: the model kind (causal or encoder-decoder), decided from config.json alone, and the architectures each
  kind supports;
- `tokenizer`: the tokenizer, with a pad token that is not EOS;
- `loader`: weights in a dtype and on a device chosen by capability, a LoRA adapter merged, unmerged (switchable off
  per call) or off;
- `builtin`: models that ship inside Python packages (GGUF), converted once to a plain folder;
- `compat`: keyword differences between transformers versions.

Nothing is imported here, so a stage that only needs to resolve a reference (or a tokenizer) never imports the
weight-loading code: data preparation may use `reference` and `tokenizer`, never `loader` (checked in CI).
"""
