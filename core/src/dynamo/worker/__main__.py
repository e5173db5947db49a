from dynamo.worker.main import main

main()
