"""Plan vectors: the unsigned part of a CheckUpdate answer (``payloads``) checked against the signed
manifests before anything is fetched (``docs/protocol.md`` sections 5, 7 and 8). Every refusal is a
``ManifestError``; a plan that passes comes back in the manifest's file order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from edgerec.codecs import max_payload_size
from edgerec.tools.vectors.index import IndexWriter, Json
from edgerec.tools.vectors.trust_vectors import CODECS, Scene, base_request, signed
from edgerec.v1 import update_pb2


def setting(**values: object) -> Callable[[update_pb2.Payload], None]:
    """An edit of one plan entry that sets its fields to ``values``."""

    def edit(payload: update_pb2.Payload) -> None:
        for name, value in values.items():
            setattr(payload, name, value)

    return edit


Edit = Callable[[list[update_pb2.Payload]], object]


def plan_vectors(index: IndexWriter, scene: Scene) -> None:
    current = index.add_file(
        "plans/current-v1.manifest.pb",
        signed(scene.manifest(1), "root-a").SerializeToString(deterministic=True),
        role="message",
    )

    def add(
        name: str,
        description: str,
        edit: Edit | None,
        expect: Json,
        *,
        codec: str = "tensor",
        offered: Sequence[str] = CODECS,
        has_current: bool = True,
    ) -> None:
        payloads = scene.plan(codec)
        if edit is not None:
            edit(payloads)
        response = scene.response(base_request())
        del response.payloads[:]
        response.payloads.extend(payloads)
        response.payload_bytes = sum(p.size for p in payloads)
        path = index.add_file(
            f"plans/{name}.response.pb", response.SerializeToString(deterministic=True), role="message"
        )
        index.add_vector(
            {
                "id": f"plan/{name}",
                "kind": "plan",
                "description": description,
                "inputs": {"response": path, "current_manifest": current if has_current else None},
                "params": {"current_recipe": "fp32" if has_current else "", "offered_codecs": list(offered)},
                "expect": expect,
            }
        )

    refused = {"error": "ManifestError"}

    def entries(*codecs: str) -> Json:
        return {
            "entries": [{"path": p, "codec": c} for p, c in zip(("model.onnx", "model.onnx.data"), codecs, strict=True)]
        }

    def data(edit: Callable[[update_pb2.Payload], object]) -> Edit:
        return lambda payloads: edit(payloads[1])

    def graph(edit: Callable[[update_pb2.Payload], object]) -> Edit:
        return lambda payloads: edit(payloads[0])

    def full_files(payloads: list[update_pb2.Payload]) -> None:
        for p in payloads:
            sha, size = scene.payload_ids["full" if p.path.endswith(".data") else "full/model.onnx"]
            p.codec, p.base_path, p.base_sha256, p.payload_id, p.sha256, p.size = "full", "", "", sha, sha, size

    add("ok-tensor", "copy model.onnx, a tensor delta of model.onnx.data", None, entries("copy", "tensor"))
    for codec in ("full", "bsdiff4", "zstd-patch-from"):
        add(
            f"ok-{codec}",
            f"copy model.onnx, a {codec} payload of model.onnx.data",
            None,
            entries("copy", codec),
            codec=codec,
        )
    add(
        "ok-full-not-listed",
        "a full payload although the device listed only tensor: full is always accepted",
        None,
        entries("copy", "full"),
        codec="full",
        offered=["tensor"],
    )
    add(
        "ok-full-no-current",
        "a device running nothing, full payloads for both files",
        full_files,
        entries("full", "full"),
        has_current=False,
        offered=["full"],
    )
    add(
        "ok-reordered",
        "the plan lists the files in another order: checked in the manifest's order",
        lambda p: p.reverse(),
        entries("copy", "tensor"),
    )
    add(
        "ok-urls",
        "two https/http URLs on the delta",
        data(lambda p: p.urls.extend(["https://cdn.example.com/p/x?sig=abc", "http://10.0.0.5:8080/p/x"])),
        entries("copy", "tensor"),
    )
    add(
        "ok-urls-at-limits",
        "4 URLs of exactly 2048 bytes",
        data(lambda p: p.urls.extend("https://h.example/" + str(i) * (2048 - 18) for i in range(4))),
        entries("copy", "tensor"),
    )
    add(
        "codec-not-offered",
        "a bsdiff4 payload to a device that offered only tensor",
        None,
        refused,
        codec="bsdiff4",
        offered=["tensor"],
    )
    add("unknown-codec", "codec 'brotli'", data(setting(codec="brotli")), refused)
    add("empty-codec", "an empty codec name", data(setting(codec="")), refused)
    add("missing-file", "no entry for model.onnx.data", lambda p: p.pop(), refused)
    add("file-twice", "model.onnx.data twice", lambda p: p.append(p[1]), refused)
    add(
        "extra-file",
        "an entry for a file the manifest lacks",
        lambda p: p.append(
            update_pb2.Payload(path="extra.bin", codec="copy", base_path="model.onnx", base_sha256=p[0].base_sha256)
        ),
        refused,
    )
    add(
        "target-sha256",
        "target_sha256 differs from the signed one",
        data(setting(target_sha256="0" * 64)),
        refused,
    )
    add(
        "target-size",
        "target_size differs from the signed one",
        data(lambda p: setattr(p, "target_size", p.target_size + 1)),
        refused,
    )
    add(
        "payload-id-uppercase",
        "a payload id in uppercase hex",
        data(setting(payload_id=scene.payload_ids["tensor"][0].upper(), sha256=scene.payload_ids["tensor"][0].upper())),
        refused,
    )
    add(
        "payload-id-path",
        "a payload id that is a path",
        data(setting(payload_id="../../etc/passwd", sha256="../../etc/passwd")),
        refused,
    )
    add(
        "sha256-not-payload-id",
        "sha256 differs from payload_id",
        data(setting(sha256="0" * 64)),
        refused,
    )
    add(
        "size-below-container",
        "size 127: less than a container's header and trailer",
        data(setting(size=127)),
        refused,
    )
    add(
        "size-over-bound",
        "size one byte over the tensor bound for the signed target size",
        data(lambda p: setattr(p, "size", max_payload_size("tensor", p.target_size) + 1)),
        refused,
    )
    add(
        "copy-names-payload",
        "a copy entry with a payload id",
        graph(setting(payload_id="a" * 64, sha256="a" * 64, size=200)),
        refused,
    )
    add(
        "copy-other-bytes",
        "a copy of model.onnx.data, whose signed bytes in version 1 are not the target's",
        data(setting(codec="copy", payload_id="", sha256="", size=0)),
        refused,
    )
    add(
        "base-not-current",
        "a delta whose base_path is not a file of the running version",
        data(setting(base_path="other.data")),
        refused,
    )
    add(
        "base-path-escape",
        "a delta whose base_path climbs out",
        data(setting(base_path="../model.onnx.data")),
        refused,
    )
    add(
        "base-sha256",
        "a delta whose base_sha256 is not the running file's signed sha256",
        data(setting(base_sha256="0" * 64)),
        refused,
    )
    add("delta-without-current", "a delta to a device running nothing", None, refused, has_current=False)
    add(
        "full-names-base",
        "a full payload naming a base file",
        data(setting(base_path="model.onnx.data")),
        refused,
        codec="full",
    )
    for label, url in (
        ("ftp", "ftp://cdn.example.com/p"),
        ("file", "file:///etc/passwd"),
        ("relative", "/p/x"),
        ("no-host", "https:///p/x"),
        ("userinfo", "https://user:pw@cdn.example.com/p"),
        ("space", "https://cdn.example.com/a b"),
        ("non-ascii", "https://cdn.example.com/\u00e9"),
        ("bad-port", "https://cdn.example.com:99999/p"),
    ):
        add(f"url-{label}", f"a URL {url!r}", data(lambda p, url=url: p.urls.append(url)), refused)  # type: ignore[misc]
    add(
        "url-too-long",
        "a URL of 2049 bytes",
        data(lambda p: p.urls.append("https://h.example/" + "x" * (2049 - 18))),
        refused,
    )
    add("url-five", "5 URLs", data(lambda p: p.urls.extend(f"https://h{i}.example/p" for i in range(5))), refused)
    add("url-on-copy", "a copy entry with a URL", graph(lambda p: p.urls.append("https://cdn.example.com/p")), refused)
