"""nestrank's own metrics on Triton's Prometheus endpoint (`pb_utils.MetricFamily`, passed in so this imports and is
tested outside Triton): the passage tiers' counters and the schedulers'."""

from __future__ import annotations


class PassageMetrics:
    """The passage states' counters on Triton's Prometheus endpoint, labelled by model and instance (each instance
    is a process with its own first level):
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
        labels = {"model": model, "instance": instance}
        self.metrics = {key: f.Metric(labels=labels if key.startswith("cache") else {**labels, "store": store})
                        for key, f in self.families.items() if key != "fetch"}  # fmt: skip
        self.fetch = self.families["fetch"].Metric(labels={**labels, "store": store}, buckets=self.FETCH_BUCKETS)
        self.reported: dict[str, int] = {}

    def report(self, cache_stats, store_stats) -> None:
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
    by kind (`embed`, `rerank_encode`, `rerank_score`): counters nestrank_<kind>_{admitted, shed, expired, cancelled,
    batches, tokens}, the gauge nestrank_<kind>_tokens_per_s (its estimate), and histograms
    nestrank_<kind>_queue_seconds (per request) and nestrank_<kind>_batch_seconds."""

    COUNTERS = {"admitted": "requests queued", "shed": "requests refused at once: they would wait past the bound",
                "expired": "requests admitted but refused when they reached the worker past the bound",
                "cancelled": "requests their callers gave up before they ran", "batches": "executions",
                "tokens": "tokens of work done (the kind's unit)"}  # fmt: skip
    BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]

    def __init__(self, pb_utils, model: str, instance: str, kind: str = "embed"):
        family, labels = pb_utils.MetricFamily, {"model": model, "instance": instance}
        self.families = {key: family(name=f"nestrank_{kind}_{key}", description=help_, kind=family.COUNTER)
                         for key, help_ in self.COUNTERS.items()}  # fmt: skip
        self.families["tokens_per_s"] = family(name=f"nestrank_{kind}_tokens_per_s", kind=family.GAUGE,
                                               description="the scheduler's estimate of its speed")  # fmt: skip
        for key in ("queue_seconds", "batch_seconds"):
            self.families[key] = family(name=f"nestrank_{kind}_{key}", kind=family.HISTOGRAM,
                                        description=f"{key.split('_')[0]} time in seconds")  # fmt: skip
        self.metrics = {key: f.Metric(labels=labels, **({"buckets": self.BUCKETS} if "seconds" in key else {}))
                        for key, f in self.families.items()}  # fmt: skip
        self.reported = dict.fromkeys(self.COUNTERS, 0)

    def report(self, scheduler) -> None:
        # Only what changed: each call is a round trip to the server, and this runs on the thread taking requests in.
        stats = scheduler.stats
        for key in self.COUNTERS:
            value = getattr(stats, key)
            if value != self.reported[key]:
                self.metrics[key].increment(value - self.reported[key])
                self.reported[key] = value
        if scheduler.tokens_per_s != self.reported.get("tokens_per_s"):
            self.metrics["tokens_per_s"].set(scheduler.tokens_per_s)
            self.reported["tokens_per_s"] = scheduler.tokens_per_s
        for key in ("queue_seconds", "batch_seconds"):
            drained, values = getattr(stats, key), []
            while drained:  # the worker appends while this drains
                values.append(drained.pop())
            for value in values:
                self.metrics[key].observe(value)
