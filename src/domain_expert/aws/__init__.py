"""`domain-expert aws ...`: upload runs, train on SageMaker with our own container, deploy endpoints, import into
Bedrock, follow and download jobs. boto3 is an optional extra (`pip install 'domain-expert[aws]'`), imported only
inside functions, so the default install and `--help` never need it. docs/aws.md has the commands, the IAM
permissions and the container contract; session.py is the one funnel every request goes through (dry-run, errors,
cleanup)."""
