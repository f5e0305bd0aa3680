"""The report's slow part computed ahead: while a study's references train (one Ray task on
one CPU, the driver waiting), a thread of the driver embeds, on one CPU, the points of the
report's two t-SNE figures, which :func:`bmlr.tuning.report.tsne.embed` then keeps; the report finds them
done. The same functions choose the points for the warm-up and for the figures, so what is
computed ahead is what the report would compute. A failure here is silent: the report
computes (and explains) it again."""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Iterator

from bmlr.tuning.report.best_model import best_model_sample
from bmlr.tuning.report.study_view import Context
from bmlr.tuning.report.tsne import embed
from bmlr.tuning.report.tsne_features import feature_panels
from bmlr.tuning.report.tsne_labels import label_points, sample_reshaping

__all__ = ["warm_report"]


def _embed_all(study_dir: Path) -> None:
    """On one thread of OpenMP and BLAS: the reference trains on the other CPUs, and sharing
    theirs would slow it by what is saved here (measured: 11 s on 2 cores)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        try:
            sample = best_model_sample(Context.open(study_dir, lambda _line: None))
            points = [*feature_panels(sample).values(), *label_points(sample, sample_reshaping(sample))[0].values()]
        except Exception:  # no sample, an unreadable one, ...: the report says why
            return
        for p in points:
            with contextlib.suppress(Exception):
                embed(p)


@contextlib.contextmanager
def warm_report(study_dir: Path) -> Iterator[None]:
    """Within the block, the t-SNE embeddings of the study's report are computed in a
    background thread; on leaving it, waits for them (the report needs them next)."""
    worker = threading.Thread(target=_embed_all, args=(Path(study_dir),), name="report-warmup", daemon=True)
    worker.start()
    try:
        yield
    finally:
        worker.join()
