"""A registry copied while this process reads it stays whole, and a closed ``.part`` refuses late writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgerec.device.transport.part import PartFile
from edgerec.errors import TransportError
from edgerec.registry import LocalRegistry, copy_registry


def test_a_copy_holds_the_documents_and_the_source_stays_usable(tmp_path: Path) -> None:
    source = LocalRegistry(tmp_path / "source")
    etag = source.put_document("fleet/a", b"one", if_match=None)
    assert source.get_document("fleet/a") is not None  # a pooled reader now holds the index open
    copy = LocalRegistry(copy_registry(source.root, tmp_path / "copy"))
    source.put_document("fleet/a", b"two", if_match=etag)
    document = copy.get_document("fleet/a")
    assert document is not None and document.data == b"one"
    again = source.get_document("fleet/a")
    assert again is not None and again.data == b"two"
    assert LocalRegistry(source.root).change_stamp() == source.change_stamp()


def test_a_closed_part_file_refuses_late_writes(tmp_path: Path) -> None:
    part = PartFile(tmp_path / "p.part", 8)
    with part:
        part.write(b"abcd", "test")
    with pytest.raises(TransportError):
        part.write(b"ef", "late")
    with pytest.raises(TransportError):
        part.restart()
    assert (tmp_path / "p.part").read_bytes() == b"abcd"
