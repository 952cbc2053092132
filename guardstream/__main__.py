from guardstream.cli import main

main()
