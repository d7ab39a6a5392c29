from atlas_log.cli import main

main()
