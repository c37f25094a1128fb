"""nestrank's own metrics on Triton's Prometheus endpoint (`pb_utils.MetricFamily`, passed in so this imports and is
tested outside Triton): the passage tiers' counters and the schedulers'.

Every call into a metric holds `LOCK`, one per process: python_backend 2.51 writes a metric's message into shared
memory that the metric object owns, and two threads updating one metric at once had tritonserver read a message
another thread was freeing (SIGSEGV in its `PbString::LoadFromSharedMemory`, under `ProcessMetricRequest`;
reproduced with the passage-fetch histogram observed by 8 reranks at once)."""

from __future__ import annotations

import threading

LOCK = threading.Lock()


class PassageMetrics:
    """The rerank model's counters on Triton's Prometheus endpoint, labelled by model and instance (each instance
    is a process with its own first level): nestrank_rerank_in_flight and nestrank_rerank_abandoned (requests);
    nestrank_passage_cache_{hits, misses, evictions, bytes, entries} for the first level (this process), and
    nestrank_passage_store_{hits, misses, errors, corrupt, bytes_read, bytes_written} and the histogram
    nestrank_passage_store_fetch_seconds for the store (labelled with it too)."""

    CACHE = {"hits": ("COUNTER", "first-level hits (passages)"),
             "misses": ("COUNTER", "first-level misses (passages)"),
             "evictions": ("COUNTER", "first-level evictions"),
             "bytes": ("GAUGE", "bytes the first level holds (objects and index included)"),
             "entries": ("GAUGE", "passage-state values the first level holds")}  # fmt: skip
    STORE = {"hits": "passages found in the store", "misses": "passages the store did not have (corrupt included)",
             "errors": "store operations that failed (unreachable, full)",
             "corrupt": "store values that failed their header or checksum",
             "bytes_read": "bytes read from the store", "bytes_written": "bytes written to the store"}  # fmt: skip
    FETCH_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0]
    REQUESTS = {"in_flight": ("GAUGE", "requests the instance works on now"),
                "abandoned": ("COUNTER", "requests whose callers gave up while they were worked on: their work "
                              "stopped")}  # fmt: skip

    def __init__(self, pb_utils, model: str, instance: str, store: str):
        family = pb_utils.MetricFamily
        # Families must outlive their metrics: keep both.
        self.families = {f"cache_{key}": family(name=f"nestrank_passage_cache_{key}", description=help_,
                                                kind=getattr(family, kind))
                         for key, (kind, help_) in self.CACHE.items()}  # fmt: skip
        for key, help_ in self.STORE.items():
            self.families[f"store_{key}"] = family(name=f"nestrank_passage_store_{key}", description=help_,
                                                   kind=family.COUNTER)  # fmt: skip
        self.families["fetch"] = family(name="nestrank_passage_store_fetch_seconds", kind=family.HISTOGRAM,
                                        description="seconds per batched fetch from the store")  # fmt: skip
        for key, (kind, help_) in self.REQUESTS.items():
            self.families[key] = family(name=f"nestrank_rerank_{key}", description=help_, kind=getattr(family, kind))
        labels = {"model": model, "instance": instance}
        self.metrics = {key: f.Metric(labels={**labels, "store": store} if key.startswith("store") else labels)
                        for key, f in self.families.items() if key != "fetch"}  # fmt: skip
        self.fetch = self.families["fetch"].Metric(labels={**labels, "store": store}, buckets=self.FETCH_BUCKETS)
        self.reported: dict[str, int] = {}

    def observe_fetch(self, seconds: float) -> None:
        with LOCK:
            self.fetch.observe(seconds)

    def report(self, cache_stats, store_stats, in_flight: int, abandoned: int) -> None:
        with LOCK:
            self._report(cache_stats, store_stats)
            self.metrics["in_flight"].set(in_flight)
            self.metrics["abandoned"].increment(abandoned - self.reported.get("abandoned", 0))
            self.reported["abandoned"] = abandoned

    def _report(self, cache_stats, store_stats) -> None:
        for prefix, stats, keys in (("cache", cache_stats, ("hits", "misses", "evictions")),
                                    ("store", store_stats, tuple(self.STORE))):  # fmt: skip
            for key in keys:
                name, value = f"{prefix}_{key}", getattr(stats, key)
                self.metrics[name].increment(value - self.reported.get(name, 0))
                self.reported[name] = value
        self.metrics["cache_bytes"].set(cache_stats.bytes)
        self.metrics["cache_entries"].set(cache_stats.entries)


class SchedulerMetrics:
    """A token-budget scheduler on Triton's Prometheus endpoint, labelled by model and instance, its families named
    by kind (`embed`, `rerank_encode`, `rerank_score`): counters nestrank_<kind>_{admitted, bulk, shed, expired,
    cancelled, isolated, answer_failures, batches, tokens}, the gauges nestrank_<kind>_tokens_per_s (its estimate)
    and nestrank_<kind>_progress_deadline_seconds (the Unix time by which the running execution should be over, 0
    when idle: the launcher restarts a model whose worker passed it), and histograms nestrank_<kind>_queue_seconds
    (per request) and nestrank_<kind>_batch_seconds. Reported from Triton's thread and the scheduler's worker."""

    COUNTERS = {"admitted": "requests queued", "bulk": "bulk requests queued (of the admitted)",
                "shed": "requests refused at once: they would wait past the bound",
                "expired": "requests admitted but refused when they reached the worker past the bound",
                "cancelled": "requests their callers gave up before they ran",
                "isolated": "shared executions that failed and were run again request by request",
                "answer_failures": "answers that could not be sent (their callers went away)",
                "batches": "executions", "tokens": "tokens of work done (the kind's unit)"}  # fmt: skip
    PROGRESS = "progress_deadline_seconds"
    HISTOGRAMS = ("queue_seconds", "batch_seconds")
    BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

    def __init__(self, pb_utils, model: str, instance: str, kind: str = "embed"):
        family, labels = pb_utils.MetricFamily, {"model": model, "instance": instance}
        self.families = {key: family(name=f"nestrank_{kind}_{key}", description=help_, kind=family.COUNTER)
                         for key, help_ in self.COUNTERS.items()}  # fmt: skip
        self.families["tokens_per_s"] = family(name=f"nestrank_{kind}_tokens_per_s", kind=family.GAUGE,
                                               description="the scheduler's estimate of its speed")  # fmt: skip
        self.families[self.PROGRESS] = family(name=f"nestrank_{kind}_{self.PROGRESS}", kind=family.GAUGE,
                                              description="Unix time by which the running execution should be "
                                                          "over (0: idle)")  # fmt: skip
        for key in self.HISTOGRAMS:
            self.families[key] = family(name=f"nestrank_{kind}_{key}", kind=family.HISTOGRAM,
                                        description=f"{key.split('_')[0]} time in seconds")  # fmt: skip
        self.metrics = {key: f.Metric(labels=labels, **({"buckets": self.BUCKETS} if key in self.HISTOGRAMS else {}))
                        for key, f in self.families.items()}  # fmt: skip
        self.reported = dict.fromkeys(self.COUNTERS, 0)

    def report(self, scheduler) -> None:
        with LOCK:
            self._report(scheduler)

    def _report(self, scheduler) -> None:
        # Only what changed: each call is a round trip to the server.
        stats = scheduler.stats
        for key in self.COUNTERS:
            value = getattr(stats, key)
            if value != self.reported[key]:
                self.metrics[key].increment(value - self.reported[key])
                self.reported[key] = value
        for key, value in (("tokens_per_s", scheduler.tokens_per_s), (self.PROGRESS, scheduler.progress_deadline)):
            if value != self.reported.get(key):
                self.metrics[key].set(value)
                self.reported[key] = value
        for key in self.HISTOGRAMS:
            drained, values = getattr(stats, key), []
            while drained:  # the worker appends while this drains
                values.append(drained.pop())
            for value in values:
                self.metrics[key].observe(value)
