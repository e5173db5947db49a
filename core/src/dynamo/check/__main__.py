from dynamo.check.cli import check_main

check_main(prog="python -m dynamo.check")
