"""MediaPipe Tasks: a MediaPipe-ready .tflite in the real `TextClassifier` (mediapipe.tasks.python.text), text in.

Unlike the other runners this one takes TEXT, not token ids: the tokenizer runs inside MediaPipe, from the
file's metadata, exactly as on the phone.

    runner = open_runner(path, "mediapipe")
    runner.run({"text": "some review"})            -> float32 [1, C]   probabilities in label order
    runner.run({"text": ["a", "b", ...]})         -> float32 [N, C]
    runner.classify_texts(texts)                  -> float32 [N, C]   (same, from a list)
    runner.labels                                  the class names, from the file's label file (= output order)

`create_from_options(..., max_results=-1)` makes MediaPipe return every category; they come back sorted by
score, so they are put back in label order by their `index`. The file must carry the TFLite metadata that
pipeline/formats/mediapipe.py writes (checked before loading, so a broken file fails with a one-line reason).
`num_threads` is not a MediaPipe option (its CPU delegate picks its own threads).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.errors import PipelineError
from pipeline.formats.mediapipe import check_metadata
from pipeline.runtimes.base import Runner, register

TEXT_INPUT = "text"


@register("mediapipe")
class MediaPipeRunner(Runner):
    def __init__(self, path: Path, input_names: list[str] | None = None, num_threads: int = 2):
        self.path = Path(path)
        info = check_metadata(self.path)
        self.labels = info["labels"]
        self.max_length = info["max_length"]
        self.tokenizer_kind = info["tokenizer"]
        self.input_names = [TEXT_INPUT]
        try:
            from mediapipe.tasks import python as mp_python
            from mediapipe.tasks.python import text as mp_text
        except ImportError as err:
            raise PipelineError(f"mediapipe is not installed ({err}); pip install mediapipe==1.2.3", self.path) from None
        options = mp_text.TextClassifierOptions(base_options=mp_python.BaseOptions(model_asset_path=str(self.path)),
                                                max_results=-1)
        try:
            self._classifier = mp_text.TextClassifier.create_from_options(options)
        except Exception as err:
            first = str(err).strip().splitlines()[0][:300] if str(err).strip() else ""
            raise PipelineError(f"MediaPipe TextClassifier cannot load the model ({type(err).__name__}: {first})",
                                self.path) from None

    def signature(self) -> tuple[list[dict], list[dict]]:
        return [{"name": TEXT_INPUT, "shape": None, "dtype": None}], [{"name": None, "shape": [1, len(self.labels)],
                                                                       "dtype": None}]

    def classify(self, text: str) -> np.ndarray:
        """One text -> probabilities [C] in label order."""
        result = self._classifier.classify(str(text))
        scores = np.full(len(self.labels), np.nan, dtype=np.float32)
        for category in result.classifications[0].categories:
            scores[category.index] = category.score
        if np.isnan(scores).any():
            raise PipelineError(f"MediaPipe returned {len(result.classifications[0].categories)} categories for "
                                f"{len(self.labels)} labels", self.path)
        return scores

    def classify_texts(self, texts) -> np.ndarray:
        return np.stack([self.classify(t) for t in texts]) if len(texts) else np.zeros((0, len(self.labels)), np.float32)

    def run(self, inputs: dict) -> np.ndarray:
        if TEXT_INPUT not in inputs:
            raise PipelineError(f"the MediaPipe runner takes text: inputs={{'text': ...}}, got {sorted(inputs)}", self.path)
        texts = inputs[TEXT_INPUT]
        if isinstance(texts, str):
            texts = [texts]
        return self.classify_texts([str(t) for t in np.asarray(texts, dtype=object).ravel()])

    def close(self) -> None:
        self._classifier.close()
