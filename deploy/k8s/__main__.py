"""scripts/k8s: python -m deploy.k8s up | down | status [--json] | kubectl ARGS... | helm ARGS... | build"""

import sys

from deploy.k8s.cluster import main

raise SystemExit(main(sys.argv[1:]))
