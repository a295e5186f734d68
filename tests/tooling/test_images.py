"""The image build's own logic (scripts/image): tags, names, cache keys, sources, the lock, archives.
Nothing here runs buildah, mmdebstrap or containerd."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from deploy.images import build as images
from edge.config import DESCRIPTOR_SET_NAME, K8S_JWKS_DIR, ImagePaths, render_k8s


def test_the_tag_is_the_commit_or_the_commit_marked_dirty_with_the_content() -> None:
    assert images.image_tag("12ab49d02c85", False, "f" * 64) == "12ab49d02c85"
    assert images.image_tag("12ab49d02c85", True, "0123456789abcdef") == "12ab49d02c85-dirty-01234567"
    # Two different uncommitted states never share a tag.
    assert images.image_tag("12ab49d02c85", True, "a" * 64) != images.image_tag("12ab49d02c85", True, "b" * 64)


def test_references_are_what_the_chart_names_and_containerd_holds() -> None:
    assert images.image_ref(images.APP, "abc") == "runtrack/app:abc"
    assert images.image_ref(images.ENVOY, "abc") == "runtrack/envoy:abc"
    assert images.containerd_name("runtrack/app:abc") == "docker.io/runtrack/app:abc"


@pytest.mark.parametrize(
    "ref, name",
    [
        ("runtrack/app:1", "docker.io/runtrack/app:1"),
        ("pause:3.10", "docker.io/library/pause:3.10"),
        ("docker.io/runtrack/app:1", "docker.io/runtrack/app:1"),
        ("localhost/runtrack/app:1", "localhost/runtrack/app:1"),
        ("registry.example.org:5000/runtrack/app:1", "registry.example.org:5000/runtrack/app:1"),
        ("runtrack/app", "docker.io/runtrack/app:latest"),
    ],
)
def test_containerd_name_normalizes_like_kubelet(ref: str, name: str) -> None:
    assert images.containerd_name(ref) == name


def test_package_lists_ignore_comments_order_and_repeats() -> None:
    text = "# base\npython3\n\ntzdata  # zone files\nca-certificates\npython3\n"
    assert images.parse_packages(text) == ("ca-certificates", "python3", "tzdata")


def test_the_committed_package_lists_make_the_images_bases() -> None:
    assert images.base_spec(images.APP).packages == ("ca-certificates", "python3", "tzdata")
    assert images.base_spec(images.ENVOY).packages == ("ca-certificates",)


def test_the_base_key_follows_packages_suite_and_options_not_their_order() -> None:
    key = images.BaseSpec("app", ("python3", "tzdata")).key()
    assert images.BaseSpec("app", ("tzdata", "python3")).key() == key
    assert images.BaseSpec("app", ("python3", "tzdata", "curl")).key() != key
    assert images.BaseSpec("app", ("python3", "tzdata"), suite="trixie").key() != key
    assert images.BaseSpec("app", ("python3", "tzdata"), variant="apt").key() != key
    assert images.BaseSpec("app", ("python3", "tzdata"), dpkg_options=()).key() != key
    assert len(key) == 64


def test_mmdebstrap_gets_the_mirrors_as_arguments_and_never_reads_stdin() -> None:
    spec = images.BaseSpec("app", ("python3",))
    mirrors = ["deb http://deb.debian.org/debian bookworm main"]
    args = spec.mmdebstrap_args(mirrors, "/tmp/out.tar")
    assert args[0] == "mmdebstrap"
    assert args[-3:] == ["bookworm", "/tmp/out.tar", *mirrors]
    assert "--variant=minbase" in args
    assert "--include=python3" in args
    assert "--format=tar" in args
    assert any(a.startswith("--customize-hook=") and "useradd --uid 10001" in a for a in args)


DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Enabled: no
"""


def test_deb822_sources_are_read_stanza_by_stanza() -> None:
    sources = images.parse_deb822_sources(DEBIAN_SOURCES)
    assert sources == [
        images.AptSource("http://deb.debian.org/debian", "bookworm", ("main",)),
        images.AptSource("http://deb.debian.org/debian", "bookworm-updates", ("main",)),
        images.AptSource("http://deb.debian.org/debian-security", "bookworm-security", ("main", "contrib")),
    ]


def test_deb822_continuation_lines_belong_to_their_field() -> None:
    text = "Types: deb\nURIs: http://m/debian\nSuites: bookworm\nComponents: main\nSigned-By:\n -----BEGIN\n .\n"
    assert images.parse_deb822_sources(text) == [images.AptSource("http://m/debian", "bookworm", ("main",))]


def test_one_line_sources_skip_options_comments_and_deb_src() -> None:
    text = (
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n"
        "# deb http://old.example/debian bookworm main\n"
        "deb-src http://mirror.example/debian bookworm main\n"
        "deb [ trusted=yes ] http://local/debian bookworm-updates main  # a comment\n"
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
    )
    assert images.parse_one_line_sources(text) == [
        images.AptSource("http://mirror.example/debian", "bookworm", ("main", "contrib")),
        images.AptSource("http://local/debian", "bookworm-updates", ("main",)),
        images.AptSource("https://packages.cloud.google.com/apt", "cloud-sdk-bookworm", ("main",)),
    ]


def test_mirror_lines_keep_debian_bookworm_and_its_updates_only() -> None:
    sources = [
        *images.parse_deb822_sources(DEBIAN_SOURCES),
        images.AptSource("https://deb.nodesource.com/node_20.x", "nodistro", ("main",)),
        images.AptSource("https://packages.cloud.google.com/apt", "cloud-sdk-bookworm", ("main",)),
        images.AptSource("http://deb.debian.org/debian", "bookworm", ("main",)),
        images.AptSource("http://other/debian", "bookworm", ("contrib",)),
    ]
    assert images.mirror_lines(sources) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]


def test_host_sources_are_read_from_the_files_apt_reads(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text("deb http://a/debian bookworm main\n")
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEBIAN_SOURCES)
    (tmp_path / "sources.list.d" / "gcloud.list.disabled").write_text("deb http://x/debian bookworm main\n")
    uris = {s.uri for s in images.host_apt_sources(tmp_path)}
    assert uris == {"http://a/debian", "http://deb.debian.org/debian", "http://deb.debian.org/debian-security"}


def test_pins_are_read_by_canonical_name() -> None:
    pins = images.parse_pins(["psycopg[binary]==3.3.9", "Prometheus_Client == 0.26.0", "grpcio>=1", "# x==1"])
    assert pins == {"psycopg": "3.3.9", "prometheus-client": "0.26.0"}


def test_lock_problems_name_missing_and_different_versions() -> None:
    pins = {"grpcio": "1.85.1", "protobuf": "7.36.2", "tzdata": "2026.6"}
    locked = {"grpcio": "1.85.1", "protobuf": "7.36.1", "click": "8.5.1"}
    assert images.lock_problems(pins, locked) == [
        "protobuf is 7.36.2 in pyproject.toml but 7.36.1 in the lock",
        "tzdata is pinned in pyproject.toml but missing from the lock",
    ]


def test_the_lock_renders_sorted_with_hashes_and_reads_back() -> None:
    text = images.render_lock([("typing_extensions", "4.16.0", "b" * 64), ("PyYAML", "6.0.3", "a" * 64)])
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert lines == [
        "pyyaml==6.0.3 \\",
        f"    --hash=sha256:{'a' * 64}",
        "typing-extensions==4.16.0 \\",
        f"    --hash=sha256:{'b' * 64}",
    ]
    assert images.parse_pins(text.splitlines()) == {"pyyaml": "6.0.3", "typing-extensions": "4.16.0"}


def test_the_committed_lock_installs_exactly_pyprojects_pins_with_a_hash_each() -> None:
    text = images.LOCK_FILE.read_text()
    locked = images.parse_pins(text.splitlines())
    assert images.lock_problems(images.parse_pins(images.runtime_requirements()), locked) == []
    assert "psycopg-binary" in locked  # psycopg[binary]: no libpq in the image
    assert text.count("--hash=sha256:") == len(locked)


def test_pip_is_told_every_manylinux_tag_bookworms_glibc_runs() -> None:
    tags = images.pip_platforms((2, 36), "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64"
    assert "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_37_x86_64" not in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    args = images.pip_target_args()
    assert args[:1] == ["--only-binary=:all:"]
    assert args[args.index("--abi") : args.index("--abi") + 2] == ["--abi", "cp311"]


def test_the_content_key_follows_files_base_configuration_and_extras() -> None:
    key = images.content_key(images.APP, "inputs", "base", {})
    assert images.content_key(images.APP, "inputs", "base", {}) == key
    assert images.content_key(images.APP, "inputs2", "base", {}) != key
    assert images.content_key(images.APP, "inputs", "base2", {}) != key
    assert images.content_key(images.ENVOY, "inputs", "base", {}) != key
    assert images.content_key(images.APP, "inputs", "base", {"tile_url": "https://t"}) != key


def test_the_files_digest_follows_content_names_and_the_executable_bit(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.sql").write_text("select 1;\n")
    digest = images.files_digest(tmp_path, ["b.sql", "a.py"])
    assert images.files_digest(tmp_path, ["a.py", "b.sql", "a.py"]) == digest
    (tmp_path / "a.py").write_text("x = 2\n")
    changed = images.files_digest(tmp_path, ["a.py", "b.sql"])
    assert changed != digest
    (tmp_path / "a.py").chmod(0o755)
    assert images.files_digest(tmp_path, ["a.py", "b.sql"]) != changed


def test_the_app_image_runs_the_tracking_service_as_uid_10001() -> None:
    config = images.APP.config
    assert config.user == "10001:10001"
    assert config.cmd == ("python", "-m", "tracking_service", "--port", "50051", "--metrics-port", "9100")
    env = dict(config.env)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PATH"].startswith("/opt/runtrack/bin:")
    assert env["RUNTRACK_BIND_HOST"] == "0.0.0.0"
    assert config.workdir == "/opt/runtrack"
    args = config.buildah_args()
    assert args[args.index("--cmd") + 1] == json.dumps(list(config.cmd))
    assert "50051/tcp" in args
    assert "9100/tcp" in args


def test_the_envoy_image_runs_envoy_on_the_mounted_config_as_uid_10001() -> None:
    config = images.ENVOY.config
    assert config.user == "10001:10001"
    assert config.cmd == ("envoy", "-c", "/etc/envoy/envoy.yaml")
    assert config.workdir == "/srv/runtrack"


def test_the_envoy_image_holds_the_files_the_charts_envoy_config_reads() -> None:
    assert ImagePaths().web_dist == images.WEB_DIST_IN_IMAGE
    assert ImagePaths().generated == images.GENERATED_IN_IMAGE
    text = json.dumps(render_k8s())
    assert f"{images.GENERATED_IN_IMAGE}/{DESCRIPTOR_SET_NAME}" in text
    for name in images.WEB_FILES:
        assert f"{images.WEB_DIST_IN_IMAGE}/{name}" in text
    assert f"{images.GENERATED_IN_IMAGE}/openapi.json" in text
    assert DESCRIPTOR_SET_NAME in images.ENVOY.inputs[-2]
    assert K8S_JWKS_DIR.startswith("/etc/")  # mounted by the chart, not in the image


def test_each_image_is_rebuilt_when_its_own_files_or_the_recipe_change() -> None:
    for image in images.IMAGES:
        assert "deploy/images/build.py" in image.inputs
        assert f"deploy/images/{image.name}.packages" in image.inputs
    assert {"tracking_service", "summary_service", "generated/runtrack"} <= set(images.APP.inputs)
    assert "web" in images.ENVOY.inputs
    assert "web" not in images.APP.inputs


def test_the_index_names_the_image_for_containerd_and_other_tools() -> None:
    index: dict[str, Any] = {
        "schemaVersion": 2,
        "manifests": [{"digest": "sha256:1", "annotations": {"org.opencontainers.image.ref.name": "old"}}],
    }
    out = images.annotated_index(index, "docker.io/runtrack/app:abc", "abc")
    annotations = out["manifests"][0]["annotations"]
    assert annotations["io.containerd.image.name"] == "docker.io/runtrack/app:abc"
    assert annotations["org.opencontainers.image.ref.name"] == "docker.io/runtrack/app:abc"
    assert annotations["org.opencontainers.image.revision"] == "abc"
    assert index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"] == "old"
    with pytest.raises(ValueError):
        images.annotated_index({"manifests": []}, "x", "y")


def test_device_nodes_stay_out_of_the_base() -> None:
    for kind, kept in ((tarfile.CHRTYPE, False), (tarfile.BLKTYPE, False), (tarfile.REGTYPE, True)):
        member = tarfile.TarInfo("./dev/null")
        member.type = kind
        assert images.keep_in_base(member) is kept


def _layout(root: Path) -> Path:
    """A minimal OCI layout: one layer holding one file, a config, a manifest."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        info = tarfile.TarInfo("hello.txt")
        info.size = 5
        t.addfile(info, io.BytesIO(b"hello"))
    layer = put(gzip.compress(buf.getvalue()))
    config = put(b"{}")
    manifest = put(json.dumps({"schemaVersion": 2, "config": config, "layers": [layer]}).encode())
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return root


def test_an_archive_is_written_named_measured_and_retagged(tmp_path: Path) -> None:
    layout = _layout(tmp_path / "layout")
    archive = tmp_path / "app-abc.oci.tar"
    images.write_archive(layout, archive, "docker.io/runtrack/app:abc", "abc", 1_700_000_000)
    with tarfile.open(archive) as t:
        names = t.getnames()
        assert names[:2] == ["oci-layout", "index.json"]
        assert all(m.uid == 0 and m.mtime == 1_700_000_000 for m in t.getmembers())
    index = images.archive_index(archive)
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"] == "docker.io/runtrack/app:abc"
    sizes = images.measure(archive)
    assert sizes["uncompressed_bytes"] == 10240  # one 5-byte file in a tar: header, data, two end blocks, padding
    assert sizes["archive_bytes"] == archive.stat().st_size
    assert len(sizes["layers"]) == 1

    again = tmp_path / "app-def.oci.tar"
    images.retag_archive(archive, again, "docker.io/runtrack/app:def", "def")
    retagged = images.archive_index(again)
    assert retagged["manifests"][0]["annotations"]["io.containerd.image.name"] == "docker.io/runtrack/app:def"
    assert retagged["manifests"][0]["digest"] == index["manifests"][0]["digest"]
    assert images.measure(again)["manifest_digest"] == sizes["manifest_digest"]


def test_sizes_read_in_megabytes() -> None:
    assert images.human(186_512_345) == "186.5 MB"
