"""One loaded SavedModel version (the TensorFlow shell around the pure checks)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import get_model_metadata_pb2

from services.modelserver.errors import ModelLoadError
from services.modelserver.tensors import dtype_name, shape_tuple
from services.modelserver.validation import (
    SignatureSpec,
    TensorSpec,
    select_outputs,
    validate_inputs,
)

logger = logging.getLogger(__name__)

SERVE_TAG = "serve"
# Signatures TF Serving lists in metadata but that cannot be called for predictions.
INIT_OP_SIGNATURE = "__saved_model_init_op"


def signature_spec(name: str, definition: meta_graph_pb2.SignatureDef) -> SignatureSpec:
    """The pure description of a SignatureDef used for request validation."""

    def specs(infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> dict[str, TensorSpec]:
        return {
            key: TensorSpec(dtype_name(info.dtype), shape_tuple(info.tensor_shape))
            for key, info in infos.items()
        }

    return SignatureSpec(name, specs(definition.inputs), specs(definition.outputs))


class Servable:
    """A SavedModel version loaded in process; :meth:`predict` is thread-safe."""

    def __init__(self, version: int, path: Path) -> None:
        self.version = version
        self.path = path
        try:
            saved_model = loader_impl.parse_saved_model(str(path))
            meta_graph = next(
                (m for m in saved_model.meta_graphs if SERVE_TAG in m.meta_info_def.tags), None
            )
            if meta_graph is None:
                raise ModelLoadError(f"{path} has no meta graph tagged {SERVE_TAG!r}")
            self._loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        except ModelLoadError:
            raise
        except Exception as exc:  # TF raises many types for a broken directory
            raise ModelLoadError(f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        self.signature_defs = get_model_metadata_pb2.SignatureDefMap()
        self.signature_defs.signature_def.MergeFrom(meta_graph.signature_def)
        self._functions: dict[str, Any] = {}
        self.signatures: dict[str, SignatureSpec] = {}
        for name, definition in meta_graph.signature_def.items():
            if name == INIT_OP_SIGNATURE or name not in self._loaded.signatures:
                continue
            self._functions[name] = self._loaded.signatures[name]
            self.signatures[name] = signature_spec(name, definition)
        if not self.signatures:
            raise ModelLoadError(f"{path} has no callable signatures")

    def warm_up(self) -> None:
        """Run every signature once on a one-row batch of zeros, so the first real request
        does not pay for tracing and kernel selection."""
        for name, spec in self.signatures.items():
            inputs: dict[str, np.ndarray] = {}
            for key, tensor in spec.inputs.items():
                if tensor.shape is None or any(d < 0 for d in tensor.shape[1:]):
                    return  # cannot guess a valid shape: skip warm-up
                shape = (1, *tensor.shape[1:]) if tensor.shape else ()
                if tensor.dtype == "string":
                    inputs[key] = np.full(shape, b"", dtype=object)
                else:
                    inputs[key] = np.zeros(shape, dtype=tensor.dtype)
            self.predict(name, inputs, ())

    def predict(
        self, signature_name: str, inputs: Mapping[str, np.ndarray], output_filter: Sequence[str]
    ) -> dict[str, np.ndarray]:
        """Validate and run one signature; returns the selected outputs as numpy arrays.

        ``signature_name`` must already be resolved (no empty name here).
        """
        spec = self.signatures[signature_name]
        validate_inputs(spec, inputs)
        wanted = select_outputs(spec, output_filter)
        tensors = {
            name: tf.constant(
                array, dtype=tf.string if spec.inputs[name].dtype == "string" else None
            )
            for name, array in inputs.items()
        }
        outputs = self._functions[signature_name](**tensors)
        return {name: outputs[name].numpy() for name in wanted}
