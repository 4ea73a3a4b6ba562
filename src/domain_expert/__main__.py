from domain_expert.cli import console_main

console_main()
