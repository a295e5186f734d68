"""scripts/image: python -m deploy.images build | print | verify | lock"""

from deploy.images.build import main

main()
