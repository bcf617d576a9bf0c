from qexp.cli import main

main()
