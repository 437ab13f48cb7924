from lkca_deploy.cli import main

main()
