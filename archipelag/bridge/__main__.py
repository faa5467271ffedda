from archipelag.bridge.server import main

main()
