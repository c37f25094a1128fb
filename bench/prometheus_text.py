"""Reading a Prometheus endpoint (Triton's, the front's): its samples, parsed by prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(url: str, timeout_s: float = 10.0) -> list[Sample]:
    """Every sample at `url`. A counter's sample is named as its family, without `_total` (Triton's custom counters
    have none; the parser adds it); other samples as exposed (a histogram's `_bucket`, `_sum`, `_count`)."""
    text = urllib.request.urlopen(url, timeout=timeout_s).read().decode()
    return [sample._replace(name=family.name) if family.type == "counter" else sample
            for family in text_string_to_metric_families(text) for sample in family.samples]  # fmt: skip
