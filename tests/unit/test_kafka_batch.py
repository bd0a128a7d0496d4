"""record_batch: the compiled and the pure Kafka batch writers and aiokafka's builder agree.

For any records (with and without keys), start, batch size and timestamp, with no
compression or zstd: the same end and byte-identical batches from the pure reference
(pipeline.kafka_batch), the compiled module, and aiokafka's DefaultRecordBatchBuilder
(its compiled one, which the publisher used record by record before); and aiokafka
reads the batch back as the records given.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pipeline.kafka_batch import CODEC_ZSTD
from pipeline.kafka_batch import record_batch as pure_batch
from pipeline.receiver.publisher import set_zstd_level

try:
    from pipeline._speedups import record_batch as compiled_batch
except ImportError:  # installed without the extension: the pure path alone is tested
    compiled_batch = None

set_zstd_level(1)
_AIOKAFKA_MODULE: Any = None
for _name in ("aiokafka.record._crecords.default_records", "aiokafka.record.default_records"):
    try:
        _AIOKAFKA_MODULE = __import__(_name, fromlist=["zstd_encode"])
        break
    except ImportError:
        continue
ZSTD = _AIOKAFKA_MODULE.zstd_encode  # the encoder aiokafka's builder calls (level 1)

records = st.lists(
    st.tuples(
        st.one_of(st.none(), st.binary(max_size=60)),
        # Values up to ~2 KB, compressible ones too, without much generated entropy.
        st.tuples(st.binary(max_size=200), st.integers(1, 10)).map(lambda v: v[0] * v[1]),
    ),
    min_size=1,
    max_size=40,
)


def _aiokafka(
    group: list[tuple[bytes | None, bytes]], start: int, size: int, ts: int, zstd: bool
) -> tuple[int, bytes]:
    builder = DefaultRecordBatchBuilder(2, CODEC_ZSTD if zstd else 0, 0, -1, -1, -1, size)
    end = start
    while end < len(group):
        key, value = group[end]
        if builder.append(end - start, ts, key, value, []) is None:
            break
        end += 1
    return end, bytes(builder.build())


@settings(max_examples=300, deadline=None)
@given(
    group=records,
    start_at=st.integers(0, 39),
    size=st.integers(1, 30_000),
    ts=st.integers(0, 2**42),
    zstd=st.booleans(),
)
# A record that would make the batch exactly batch_size bytes is left for the next.
@example(group=[(None, b""), (None, b"")], start_at=0, size=75, ts=0, zstd=False)
def test_pure_compiled_and_aiokafka_write_the_same_batch(
    group: list[tuple[bytes | None, bytes]], start_at: int, size: int, ts: int, zstd: bool
) -> None:
    start = start_at % len(group)
    compress = ZSTD if zstd else None
    expected = _aiokafka(group, start, size, ts, zstd)
    assert pure_batch(group, start, size, ts, compress) == expected
    if compiled_batch is not None:
        assert compiled_batch(group, start, size, ts, compress) == expected
    end, data = expected
    batch = DefaultRecordBatch(bytearray(data))
    assert batch.validate_crc()
    assert [(r.offset, r.timestamp, r.key, r.value) for r in batch] == [
        (i, ts, key, value) for i, (key, value) in enumerate(group[start:end])
    ]


@pytest.mark.skipif(compiled_batch is None, reason="pipeline._speedups is not built")
def test_a_batch_takes_records_until_the_size_and_always_one() -> None:
    group = [(b"k%d" % i, bytes(100)) for i in range(50)]
    end, data = compiled_batch(group, 0, 1_000, 1, None)  # type: ignore[misc]
    assert 1 < end < 50 and len(data) <= 1_000
    assert compiled_batch(group, 0, 1, 1, None)[0] == 1  # type: ignore[misc]
    assert compiled_batch(group, 49, 10**6, 1, None)[0] == 50  # type: ignore[misc]
