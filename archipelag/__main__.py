from archipelag.cli import main

main()
