from reludoctor.cli import main

main()
