"""Metrics handed from a child process to its parent through a file.

`hep-ingest up` runs the receiver and the consumer as child processes and shows their
counters on its status line. Each child writes its registry in the Prometheus text
format to a file `up` names (``--metrics-file``): first once it is ready, then every
fraction of a second, and a last time as it exits. The parent reads the files back
as one collector of its own registry. A file, unlike a scrape of the child's /metrics:

- needs no port (nothing to choose, nothing another process can take first);
- keeps the child's final counts after it exited (what the receiver published while
  it flushed, what it dropped at shutdown), which `up`'s drain and exit code use;
- is replaced whole (write, then rename), so a reader never sees half a file.

Its existence says the child is ready: it is first written then.

A child that runs N workers (``consume --workers N``) hands each worker a file of its
own (`worker_metrics_file`); the parent reads them as one family per metric with a
``worker`` label, so the sums on the status line are over every worker.
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

WRITE_INTERVAL_S = 0.2


def write_metrics(registry: CollectorRegistry, path: Path) -> None:
    """Replace `path` with the registry's current exposition, atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(generate_latest(registry))
    os.replace(temporary, path)


class MetricsFileWriter:
    """Writes a registry to a file now, every `interval` seconds, and at `close()`."""

    def __init__(
        self, registry: CollectorRegistry, path: Path, interval: float = WRITE_INTERVAL_S
    ) -> None:
        self._registry = registry
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        write_metrics(registry, path)
        self._thread = threading.Thread(target=self._run, name="metrics-file", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            with contextlib.suppress(OSError):  # a full disk must not stop the service
                write_metrics(self._registry, self._path)

    def close(self) -> None:
        """The last write: the counts the process exits with."""
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            write_metrics(self._registry, self._path)


def worker_metrics_file(path: Path, index: int) -> Path:
    """The file of worker `index` of a child whose metrics file is `path`."""
    return path.with_name(f"{path.stem}-w{index}{path.suffix}")


#: The label that tells apart the samples of the workers of one child.
WORKER_LABEL = "worker"


class MetricsFiles(Collector):
    """The families in some metrics files, read at each collection.

    A file not written yet yields nothing; one that cannot be read or parsed yields
    what it held at the last successful read. Files are added by groups, one per child
    process (`add`). A family that two groups (or two files of a group) both hold is
    taken from the first, so that the exposition names each family once (both of
    `up`'s children export hep_ingest_build_info); unless the files are the workers of
    one child (`label_workers`): then the family holds the samples of every file, each
    labelled with its file's index, so that no two series clash.
    """

    def __init__(self, paths: Sequence[Path] = (), *, label_workers: bool = False) -> None:
        self._groups: list[tuple[list[Path], bool]] = []
        self._last: dict[Path, list[Metric]] = {}
        if paths:
            self.add(paths, label_workers=label_workers)

    def add(self, paths: Sequence[Path], *, label_workers: bool = False) -> None:
        """Read `paths` too (after the files added before)."""
        self._groups.append((list(paths), label_workers))

    def describe(self) -> Iterable[Metric]:
        return []  # names unknown until the children run; never checked for clashes

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for paths, label_workers in list(self._groups):
            if label_workers:
                families: Iterable[Metric] = self._merged(paths)
            else:
                families = (family for path in paths for family in self._read(path))
            for family in families:
                if family.name not in seen:
                    seen.add(family.name)
                    yield family

    def _merged(self, paths: list[Path]) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for index, path in enumerate(paths):
            for family in self._read(path):
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                for sample in family.samples:
                    labels = {**sample.labels, WORKER_LABEL: str(index)}
                    into.samples.append(sample._replace(labels=labels))
        yield from merged.values()

    def _read(self, path: Path) -> list[Metric]:
        try:
            families = list(text_string_to_metric_families(path.read_text()))
        except (OSError, ValueError):  # not written yet, or cannot be read
            return self._last.get(path, [])
        self._last[path] = families
        return families


_CHILDREN: weakref.WeakKeyDictionary[CollectorRegistry, MetricsFiles] = (
    weakref.WeakKeyDictionary()
)
_CHILDREN_LOCK = threading.Lock()


def children_metrics(registry: CollectorRegistry) -> MetricsFiles:
    """The one MetricsFiles of `registry` that every child's files are added to."""
    with _CHILDREN_LOCK:
        files = _CHILDREN.get(registry)
        if files is None:
            files = _CHILDREN[registry] = MetricsFiles()
            registry.register(files)
        return files
