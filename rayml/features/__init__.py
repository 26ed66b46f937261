"""Featurizers with a mergeable fit, a JSON state and a pure batch transform, shared by training and serving.

    base.py         the featurizer shape (partial_fit / merge / finalize / apply / output_spec), shared types
    columns.py      reading a batch column as numbers, text, ...
    stats.py        mergeable moments and a quantile sketch with a relative-error bound
    numeric.py      standardize, min_max, log1p, clip, impute (+ missing indicator)
    categorical.py  one_hot, ordinal, hashing; unseen values and nulls by explicit policy
    timestamp.py    hour / minute / weekday / day / month, as values or sin/cos, in a stated time zone
    text.py         tokenize for the bundled all-MiniLM-L6-v2 encoder
    image.py        decode, resize, grayscale/RGB, normalize -> float32 NCHW
    registry.py     kinds; transform / output_spec / dumps / loads of one fitted featurizer
    pipeline.py     FeaturePipeline: steps in order -> float32 matrix + named tensors
    fitting.py      fitting a pipeline over batches, pass by pass

Importing this package imports neither Pillow nor tokenizers; they load on first use.
"""

from rayml.features.base import Applied, FeatureInputError, OutputSpec
from rayml.features.categorical import Hashing, OneHot, Ordinal
from rayml.features.fitting import fit
from rayml.features.image import ImageFeatures
from rayml.features.numeric import Clip, Impute, Log1p, MinMax, Standardize
from rayml.features.pipeline import FeaturePipeline, Features, transform, transform_rows
from rayml.features.text import Tokenize
from rayml.features.timestamp import TimestampParts

__all__ = [
    "Applied", "Clip", "FeatureInputError", "FeaturePipeline", "Features", "Hashing", "ImageFeatures",
    "Impute", "Log1p", "MinMax", "OneHot", "Ordinal", "OutputSpec", "Standardize", "TimestampParts",
    "Tokenize", "fit", "transform", "transform_rows",
]
