"""Pod discovery for Prometheus: Debian's Prometheus is built without its Kubernetes discovery, so
this process lists the cluster's pods every `--interval` seconds and writes the ones annotated
`prometheus.io/scrape: "true"` as a file_sd target file (rewritten atomically, only on change), each
labelled with its namespace, pod and component, as Prometheus' own Kubernetes discovery would.

    python -m deploy.k8s.sd --kubeconfig FILE --out FILE [--interval S]
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import ssl
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("k8s_sd")


def targets(pods: dict[str, Any]) -> list[dict[str, Any]]:
    """The file_sd entries for a PodList: running, scrape-annotated pods with an IP."""
    out = []
    for pod in pods.get("items", []):
        meta, status = pod.get("metadata", {}), pod.get("status", {})
        notes = meta.get("annotations") or {}
        if notes.get("prometheus.io/scrape") != "true" or status.get("phase") != "Running" or not status.get("podIP"):
            continue
        if meta.get("deletionTimestamp"):
            continue
        port = notes.get("prometheus.io/port", "9100")
        labels = {
            "namespace": meta.get("namespace", ""),
            "pod": meta.get("name", ""),
            "component": (meta.get("labels") or {}).get("app.kubernetes.io/component", ""),
            "__metrics_path__": notes.get("prometheus.io/path", "/metrics"),
        }
        out.append({"targets": [f"{status['podIP']}:{port}"], "labels": labels})
    return sorted(out, key=lambda t: (t["labels"]["namespace"], t["labels"]["pod"]))


class Client:
    """A GET-only client of the API server, authenticated by a kubeconfig's client certificate."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = json.loads(kubeconfig.read_text())
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        self._tmp = tempfile.TemporaryDirectory(prefix="k8s-sd-")
        files = {}
        for name, data in (
            ("ca", cluster["certificate-authority-data"]),
            ("crt", user["client-certificate-data"]),
            ("key", user["client-key-data"]),
        ):
            path = Path(self._tmp.name) / name
            path.write_bytes(base64.b64decode(data))
            files[name] = str(path)
        self.context = ssl.create_default_context(cafile=files["ca"])
        self.context.load_cert_chain(files["crt"], files["key"])

    def get(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(self.server + path, context=self.context, timeout=10) as reply:
            doc: dict[str, Any] = json.loads(reply.read())
            return doc


def main() -> int:
    parser = argparse.ArgumentParser(prog="k8s_sd")
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=2.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    client = Client(args.kubeconfig)
    last = None
    while True:
        try:
            found = targets(client.get("/api/v1/pods"))
        except OSError as err:
            log.warning("listing pods failed: %s", err)
        else:
            text = json.dumps(found, indent=1)
            if text != last:
                tmp = args.out.with_suffix(".tmp")
                tmp.write_text(text)
                tmp.replace(args.out)
                log.info("targets=%d %s", len(found), " ".join(t["labels"]["pod"] for t in found))
                last = text
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
