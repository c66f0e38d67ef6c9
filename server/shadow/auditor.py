"""Shadow audits: a random fraction of /certify answers re-certified by Monte-Carlo, off the loop.

    ACCSMOOTH_AUDIT_RATE=0.01 python -m server      # audit about 1 in 100 /certify answers

`ShadowAuditor.offer` is called by the fast path after an answer is ready; it costs one random
draw and, for a chosen answer, one `executor.submit` (microseconds), and never blocks: when
`ACCSMOOTH_AUDIT_QUEUE` audits are already running or waiting, the audit is dropped and
counted (`accsmooth_shadow_audits_dropped_total`). Audits run Cohen et al.'s CERTIFY at the
bundle's own protocol (n0, n, alpha) on ONE worker thread that

- lowers its own scheduling priority (`os.nice(ACCSMOOTH_AUDIT_NICE)`; on Linux niceness is
  per thread, so the event loop and the micro-batcher keep theirs), and
- evaluates the base model on its own onnxruntime session with intra_op_threads=1, created in
  that thread, so all of the audit's compute runs there, niced, on at most one core.

Each finished audit updates the Prometheus audit metrics with `source="shadow"`, the model's
drift window (`server.shadow.drift`: rolling over-estimation rate, exact binomial test against the
bundle's epsilon) and a bounded deque of recent results served by `GET /audits`. With several
uvicorn workers every worker audits its own traffic and keeps its own window and deque.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import random
import secrets
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from accsmooth.runtime import OnnxPredictor, RuntimeOptions, make_session
from accsmooth.sampling import certify
from server import metrics
from server.http.errors import ShuttingDown
from server.http.schemas import Agreement, AuditRecord, DriftStatus, MonteCarloSummary
from server.shadow.drift import DriftTest, DriftWindow
from server.threads import lower_thread_priority

if TYPE_CHECKING:
    from server.registry import LoadedModel
    from server.settings import Settings

log = logging.getLogger(__name__)


class ShadowAuditor:
    """Samples served answers at `settings.audit_rate` and audits them on one niced thread."""

    def __init__(self, settings: Settings, rng: random.Random | None = None):
        self.settings = settings
        self.rate = settings.audit_rate
        self.capacity = settings.audit_queue
        self.recent: deque[AuditRecord] = deque(maxlen=settings.audit_recent)
        self.done = 0
        self.dropped = 0
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._pending = 0  # running + waiting
        self._windows: dict[str, DriftWindow] = {}
        self._sessions: dict[str, OnnxPredictor] = {}  # touched by the audit thread only
        self._stop = threading.Event()  # set at shutdown: the running audit stops at its next batch
        self._executor = ThreadPoolExecutor(
            1, "shadow-audit", initializer=lower_thread_priority, initargs=(settings.audit_nice,)
        )

    @property
    def pending(self) -> int:
        return self._pending

    def offer(self, model: LoadedModel, image: np.ndarray, data: bytes, served) -> bool:
        """Maybe audit this served answer; True when an audit was queued. Never blocks."""
        if self.rate <= 0.0 or self._rng.random() >= self.rate:
            return False
        with self._lock:
            if self._pending >= self.capacity:
                self.dropped += 1
                metrics.SHADOW_DROPPED.labels(model.name).inc()
                return False
            self._pending += 1
        metrics.SHADOW_QUEUE_DEPTH.inc()
        served_at = dt.datetime.now(dt.timezone.utc)
        self._executor.submit(self._audit, model, image, data, served, served_at)
        return True

    def window(self, model: LoadedModel) -> DriftWindow:
        with self._lock:
            if model.name not in self._windows:
                cal = model.manifest.calibration
                self._windows[model.name] = DriftWindow(
                    self.settings.drift_window,
                    cal.epsilon if cal else None,
                    self.settings.drift_level,
                )
            return self._windows[model.name]

    def drift(self, model: LoadedModel) -> DriftTest:
        return self.window(model).status()

    def drift_status(self, model: LoadedModel) -> DriftStatus:
        """The drift alarm as /models/{name} shows it."""
        t = self.drift(model)
        return DriftStatus(
            drifting=t.drifting,
            audit_rate=self.rate,
            window=self.settings.drift_window,
            audits=t.audits,
            overestimated=t.overestimated,
            overestimation_rate=t.rate,
            rate_lower=t.rate_lower,
            p_value=t.p_value,
            epsilon=t.epsilon,
            level=t.level,
        )

    def audits(self, limit: int, model: str | None = None) -> list[AuditRecord]:
        """The newest `limit` results first (optionally of one model)."""
        records = [r for r in reversed(self.recent) if model is None or r.model == model]
        return records[:limit]

    def shutdown(self) -> None:
        self._stop.set()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- on the audit thread ---------------------------------------------------------------
    def _session(self, model: LoadedModel) -> OnnxPredictor:
        if model.name not in self._sessions:
            options = RuntimeOptions(
                providers=self.settings.providers, intra_op_threads=1, inter_op_threads=1
            )
            path = model.folder / model.manifest.graphs.base.file
            self._sessions[model.name] = OnnxPredictor(make_session(path, options))
        return self._sessions[model.name]

    def _audit(self, model, image, data, served, served_at) -> None:
        try:
            self._record(model, data, served, served_at, *self._certify(model, image))
        except ShuttingDown:
            log.info("shadow audit of %s cancelled: the server is shutting down", model.name)
        except Exception:  # noqa: BLE001 - an audit must never take the worker down
            log.exception("shadow audit of %s failed", model.name)
        finally:
            with self._lock:
                self._pending -= 1
            metrics.SHADOW_QUEUE_DEPTH.dec()

    def _certify(self, model: LoadedModel, image: np.ndarray):
        m = model.manifest
        seed = secrets.randbits(63)
        started = time.perf_counter()
        session = self._session(model)

        def predict(batch: np.ndarray) -> np.ndarray:
            if self._stop.is_set():
                raise ShuttingDown("the server is shutting down")
            return session(batch)

        result = certify(
            predict,
            image,
            sigma=m.sigma,
            num_classes=m.num_classes,
            n0=m.protocol.n0,
            n=m.protocol.n,
            alpha=m.protocol.alpha,
            batch_size=self.settings.sampled_batch_size,
            rng=np.random.default_rng(seed),
        )
        seconds = time.perf_counter() - started
        metrics.SAMPLES.labels(model.name).inc(m.protocol.n0 + m.protocol.n)
        metrics.COMPUTE_SECONDS.labels("shadow-audit", model.name).observe(seconds)
        return result, seed, seconds

    def _record(self, model, data, served, served_at, result, seed, seconds) -> None:
        m = model.manifest
        cert = result.certificate
        agree = Agreement.between(served, cert)
        name = model.name
        metrics.AUDITS.labels(name, "shadow").inc()
        metrics.AUDIT_SAME_CLASS.labels(name, "shadow").inc(agree.same_class)
        metrics.AUDIT_OVERESTIMATED.labels(name, "shadow").inc(agree.overestimated)
        metrics.AUDIT_RADIUS_GAP.labels(name, "shadow").observe(agree.radius_gap)
        window = self.window(model)
        was_drifting = window.status().drifting
        test = window.add(agree.overestimated)
        metrics.OVERESTIMATION_RATE.labels(name).set(test.rate or 0.0)
        metrics.DRIFT_WINDOW_AUDITS.labels(name).set(test.audits)
        metrics.DRIFTING.labels(name).set(int(test.drifting))
        if test.drifting != was_drifting:  # log the transitions, not every audit
            state = "is DRIFTING" if test.drifting else "no longer drifts"
            log.warning(
                "model %s %s: %d over-estimations in the last %d shadow audits "
                "(epsilon %.3g, p = %.2g)",
                name,
                state,
                test.overestimated,
                test.audits,
                test.epsilon,
                test.p_value,
            )
        mc = MonteCarloSummary(
            predicted_class=cert.predicted_class,
            label=None if cert.abstained else m.classes[cert.predicted_class],
            abstained=cert.abstained,
            certified_radius=cert.radius,
            p_a_lower=cert.p_a_lower,
            counts=[int(c) for c in result.counts],
            n0=m.protocol.n0,
            n=m.protocol.n,
            alpha=m.protocol.alpha,
            seed=seed,
            seconds=seconds,
        )
        self.recent.append(
            AuditRecord(
                model=name,
                model_version=m.version,
                source="shadow",
                time=served_at.isoformat(timespec="milliseconds"),
                image_sha256=hashlib.sha256(data).hexdigest(),
                surrogate=served,
                monte_carlo=mc,
                agreement=agree,
            )
        )
        with self._lock:
            self.done += 1
