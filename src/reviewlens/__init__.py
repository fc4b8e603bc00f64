"""reviewlens: Korean product reviews into keywords, per-keyword sentiment and the words that drove them."""

from .errors import ReviewlensError
from .schema import LabelSchema
from .data import Review, ReviewDataset, read_reviews, write_reviews
from .bundle import ModelBundle
from .analyzer import ReviewAnalysis, ReviewAnalyzer

__version__ = "0.1.0"

__all__ = ["LabelSchema", "ModelBundle", "Review", "ReviewAnalysis", "ReviewAnalyzer", "ReviewDataset",
           "ReviewlensError", "evaluate", "read_reviews", "train", "write_reviews"]


def train(*args, **kwargs):
    """Train a keyword + sentiment bundle (see ``reviewlens.training.train``)."""
    from .training import train as _train

    return _train(*args, **kwargs)


def evaluate(model, data, **kwargs):
    """Evaluate a bundle directory on a labeled file or dataset (see ``reviewlens.evaluation.evaluate``)."""
    from .evaluation import evaluate_bundle

    return evaluate_bundle(model, data, **kwargs)
