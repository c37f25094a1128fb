"""What an export shows: one progress bar over its stages, and the figures that matter (parity). The libraries'
chatter (torch.onnx tracer and exporter warnings, transformers' weight-loading bars, ONNX Runtime's log) only
with `-v`: it is pages long for a reranker and says nothing the parity gate does not check."""

from __future__ import annotations

import contextlib
import logging
import warnings

from tqdm import tqdm

NOISY_LOGGERS = ("torch", "transformers", "onnxscript", "onnx_ir", "sentence_transformers", "huggingface_hub")


@contextlib.contextmanager
def library_output(verbose: bool):
    """Silences the libraries' warnings, log lines and progress bars for the duration, unless `verbose`."""
    if verbose:
        yield
        return
    import onnxruntime
    from transformers.utils import logging as transformers_logging

    loggers = [logging.getLogger(name) for name in NOISY_LOGGERS]
    levels = [logger.level for logger in loggers]
    bars = transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        transformers_logging.disable_progress_bar()
        onnxruntime.set_default_logger_severity(3)  # errors only
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
            if bars:
                transformers_logging.enable_progress_bar()
            onnxruntime.set_default_logger_severity(2)  # its default, warnings


class StageBar:
    """A progress bar over an export's named stages; `stage(name)` ends the previous stage and starts `name`.
    `write` prints a line above the bar (the parity figures)."""

    def __init__(self, title: str, stages: tuple[str, ...]):
        self._bar = tqdm(total=len(stages), desc=f"{title}: ", bar_format="{desc}{n}/{total} {bar} {elapsed}")
        self._title = title
        self._started = False

    def stage(self, name: str) -> None:
        self._bar.set_description_str(f"{self._title}: {name} ", refresh=False)
        if self._started:
            self._bar.update(1)
        self._started = True

    def write(self, text: str) -> None:
        self._bar.write(text)

    def close(self, done: bool = True) -> None:
        if done:
            self._bar.set_description_str(f"{self._title}: done ", refresh=False)
            self._bar.update(self._bar.total - self._bar.n)
        self._bar.close()
