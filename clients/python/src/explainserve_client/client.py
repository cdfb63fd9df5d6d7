"""`Client`: typed calls of ExplainService returning dataclasses with numpy arrays."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final

import grpc
import numpy as np
import numpy.typing as npt
from google.protobuf.message import Message

from explainserve_client.tensors import decode_tensor, encode_tensor
from explainserve_client.v1 import explain_pb2 as pb
from explainserve_client.v1 import explain_pb2_grpc

#: The gRPC service's full name (the service config below names it).
SERVICE: Final = "explainserve.v1.ExplainService"

#: Default deadline, seconds, of the calls that run the models (Explain, ExplainStream,
#: GetActivations, PredictFromActivations, ExplainConcepts): long enough for a few hundred
#: sentences of a perturbation method on a CPU, short enough that a stuck call does not hang a
#: caller forever.
DEFAULT_TIMEOUT: Final = 120.0
#: Default deadline, seconds, of ListModels and GetModel (no model work).
METADATA_TIMEOUT: Final = 10.0
#: Default limit on message size, both ways: the server's default (--max-message-bytes).
MAX_MESSAGE_BYTES: Final = 64 * 1024 * 1024

#: gRPC's retry policy for every ExplainService method (a gRPC service config, applied by the
#: client's channel; see https://github.com/grpc/proposal/blob/master/A6-client-retries.md).
#: Only UNAVAILABLE is retried: the server answers it while it loads its models or drains, and
#: gRPC gives it when the connection fails, all cases where the call did no work, and every
#: method of this service is read-only (same request, same answer), so a retry is safe. Up to 5
#: attempts, each retry after a random delay of up to 0.2 s, 0.4 s, 0.8 s, 1.6 s; a streaming call
#: is retried only until its first message arrives. Anything else (INVALID_ARGUMENT, NOT_FOUND,
#: DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ...) is raised at once. The call's deadline bounds the
#: retries too.
RETRY_POLICY: Final = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(retry: bool = True, balance: bool = False) -> str:
    """The channel's service config (JSON): RETRY_POLICY on ExplainService, or none; with
    `balance`, gRPC's `round_robin` over every address the target resolves to (a Kubernetes
    headless Service's pods, or `ipv4:127.0.0.1:P1,127.0.0.1:P2`) and client-side health checking
    of ExplainService (a replica whose health turns NOT_SERVING, one that loads or drains, is no
    longer picked)."""
    method: dict[str, object] = {"name": [{"service": SERVICE}]}
    if retry:
        method["retryPolicy"] = RETRY_POLICY
    config: dict[str, object] = {"methodConfig": [method]}
    if balance:
        config["loadBalancingConfig"] = [{"round_robin": {}}]
        config["healthCheckConfig"] = {"serviceName": SERVICE}
    return json.dumps(config)


@dataclass(frozen=True)
class Tls:
    """TLS settings (PEM bytes, e.g. `Path("ca.pem").read_bytes()`)."""

    #: Certificates of the CAs that the server's certificate must chain to; None: the system's.
    root_certificates: bytes | None = None
    #: Mutual TLS: the client's certificate chain and private key (both or neither).
    certificate_chain: bytes | None = None
    private_key: bytes | None = None
    #: The name the server's certificate must have, when it is not the target's host name.
    server_name: str | None = None


@dataclass(frozen=True)
class Unit:
    """What one score (or activation row) is about."""

    #: The unit's text, as it appears in the input.
    text: str
    #: Character span [start, end) in the explanation's `text` (Unicode code points).
    start: int
    end: int
    #: Positions of the unit's tokens in the tokenized input.
    token_indices: tuple[int, ...]

    @classmethod
    def from_proto(cls, unit: pb.Unit) -> Unit:
        """The dataclass of a `explainserve.v1.Unit`."""
        return cls(unit.text, unit.char_start, unit.char_end, tuple(unit.token_indices))


@dataclass(frozen=True)
class ExplainedTarget:
    """A class that was explained (one row of a classifier's scores)."""

    index: int
    label: str


class _Predicted:
    """What a classifier's logits say: the probabilities and the predicted class (shared by
    `Explanation` and `ConceptExplanation`)."""

    #: The model's logits for the unperturbed input (empty for causal LMs).
    logits: npt.NDArray[np.float32]
    #: The model's class labels in index order.
    labels: tuple[str, ...]

    @property
    def probabilities(self) -> npt.NDArray[np.float32]:
        """Softmax of the logits (classifiers)."""
        if self.logits.size == 0:
            return self.logits
        shifted: npt.NDArray[np.float32] = np.exp(self.logits - self.logits.max())
        probabilities: npt.NDArray[np.float32] = shifted / shifted.sum()
        return probabilities

    @property
    def predicted_index(self) -> int | None:
        """The class the model predicts (argmax of the logits); None for causal LMs."""
        return int(np.argmax(self.logits)) if self.logits.size else None

    @property
    def predicted_label(self) -> str | None:
        """The predicted class's label, when the model has labels."""
        index = self.predicted_index
        if index is None or index >= len(self.labels):
            return None
        return self.labels[index]


def _matrix(matrix: pb.Matrix) -> npt.NDArray[np.float32]:
    """A `explainserve.v1.Matrix` as a float32 array of its shape."""
    return np.array(matrix.values, dtype=np.float32).reshape(matrix.rows, matrix.cols)


@dataclass(frozen=True, eq=False)
class Explanation(_Predicted):
    """The explanation of one input.

    Classifiers: `scores` is targets x units (one row per `targets` entry). Causal LMs: `scores`
    is continuation units (`target_units`) x units, `valid` says which cells mean something (a
    unit at or after a row's continuation unit cannot influence it), `targets` and `logits` are
    empty. With a concept target (`Client.explain(concepts=...)`), `targets` are concepts (their
    index and label in the set) and `concept_activations` holds every concept's activation."""

    #: Position of the input in the request.
    input_index: int
    #: The text the units' spans index into (causal LMs: prompt followed by continuation).
    text: str
    units: tuple[Unit, ...]
    targets: tuple[ExplainedTarget, ...]
    #: float32, rows x len(units).
    scores: npt.NDArray[np.float32]
    #: The model's logits for the unperturbed input (classifiers).
    logits: npt.NDArray[np.float32]
    #: The token ids the model saw.
    token_ids: npt.NDArray[np.int64]
    #: The model's class labels in index order (classifiers; empty for causal LMs).
    labels: tuple[str, ...]
    #: Work done: sequences through the model, and the server's wall time.
    forward_passes: int
    elapsed_ms: float
    #: Causal LMs: the continuation's units, one per row of `scores`.
    target_units: tuple[Unit, ...]
    #: Causal LMs: bool, the shape of `scores`; None for classifiers.
    valid: npt.NDArray[np.bool_] | None
    #: Causal LMs: the explained continuation, its ids, whether the server generated it, the
    #: number of prompt tokens at the start of `token_ids`, and the explained function of each
    #: continuation token.
    continuation: str
    continuation_token_ids: npt.NDArray[np.int64]
    generated: bool
    prompt_token_count: int
    continuation_scores: npt.NDArray[np.float32]
    #: With a concept target: float32, the activation of each concept of the set for the
    #: unperturbed input (index order); empty otherwise.
    concept_activations: npt.NDArray[np.float32]

    @classmethod
    def from_proto(cls, explanation: pb.Explanation, labels: Sequence[str] = ()) -> Explanation:
        """The dataclass of a `explainserve.v1.Explanation` (`labels`: the model's)."""
        scores = _matrix(explanation.scores)
        valid = None
        if explanation.target_units:
            valid = np.array(explanation.valid, dtype=np.bool_).reshape(scores.shape)
        return cls(
            input_index=explanation.input_index,
            text=explanation.text,
            units=tuple(Unit.from_proto(u) for u in explanation.units),
            targets=tuple(ExplainedTarget(t.index, t.label) for t in explanation.targets),
            scores=scores,
            logits=np.array(explanation.logits, dtype=np.float32),
            token_ids=np.array(explanation.token_ids, dtype=np.int64),
            labels=tuple(labels),
            forward_passes=explanation.counters.forward_passes,
            elapsed_ms=explanation.counters.elapsed_ms,
            target_units=tuple(Unit.from_proto(u) for u in explanation.target_units),
            valid=valid,
            continuation=explanation.continuation,
            continuation_token_ids=np.array(explanation.continuation_token_ids, dtype=np.int64),
            generated=explanation.generated,
            prompt_token_count=explanation.prompt_token_count,
            continuation_scores=np.array(explanation.continuation_scores, dtype=np.float32),
            concept_activations=np.array(explanation.concept_activations, dtype=np.float32),
        )

    @property
    def unit_texts(self) -> list[str]:
        """The units' texts, in column order."""
        return [u.text for u in self.units]


@dataclass(frozen=True)
class Progress:
    """Progress of a streamed explanation: sequences through the model, done and in all."""

    done: int
    total: int


@dataclass(frozen=True)
class SplitPoint:
    """A point of the model whose activations can be captured."""

    name: str
    #: Output shape with -1 for batch and sequence dimensions.
    shape: tuple[int, ...]
    #: True for the classification head's input (GetActivations' default).
    head_input: bool


@dataclass(frozen=True)
class ConceptSetInfo:
    """A concept set the server serves for a model (docs/concepts.md)."""

    #: The name requests give (`Client.explain_concepts(concepts=name)`).
    name: str
    #: Where its activations are read (GetModel's split point name).
    split_point: str
    #: "linear", "relu", "topk", "jumprelu" or "nnls".
    encoder: str
    #: The rows it was fitted on ("cls_token", "token", "word", ...).
    granularity: str
    #: How it was made ("sklearn.decomposition.PCA", ...).
    method: str
    #: One per concept, in index order.
    labels: tuple[str, ...]

    @classmethod
    def from_proto(cls, info: pb.ConceptSetInfo) -> ConceptSetInfo:
        """The dataclass of a `explainserve.v1.ConceptSetInfo`."""
        return cls(
            name=info.name,
            split_point=info.split_point,
            encoder=info.encoder,
            granularity=info.granularity,
            method=info.method,
            labels=tuple(info.labels),
        )


@dataclass(frozen=True)
class ModelInfo:
    """A loaded model, as ListModels and GetModel describe it."""

    name: str
    #: "sequence-classification" or "causal-lm".
    task: str
    labels: tuple[str, ...]
    max_length: int
    device: str
    dtype: str
    replacement: str
    replacement_token_id: int
    split_points: tuple[SplitPoint, ...]
    #: The concept sets served for this model (ExplainConcepts, `explain(concepts=...)`).
    concept_sets: tuple[ConceptSetInfo, ...] = ()

    @classmethod
    def from_proto(cls, info: pb.ModelInfo) -> ModelInfo:
        """The dataclass of a `explainserve.v1.ModelInfo`."""
        return cls(
            name=info.name,
            task=info.task,
            labels=tuple(info.labels),
            max_length=info.max_length,
            device=info.device,
            dtype=info.dtype,
            replacement=info.replacement,
            replacement_token_id=info.replacement_token_id,
            split_points=tuple(
                SplitPoint(p.name, tuple(p.shape), p.head_input) for p in info.split_points
            ),
            concept_sets=tuple(ConceptSetInfo.from_proto(c) for c in info.concept_sets),
        )


@dataclass(frozen=True, eq=False)
class Activations:
    """GetActivations' stream put back together: every input's rows, in request order."""

    #: Split point name (the head input's real name for the default) -> [rows, features...],
    #: all inputs' rows stacked (float32, or float16 when asked for).
    values: dict[str, npt.NDArray[np.floating]]
    #: len(inputs) + 1 offsets: input i owns rows [row_offsets[i], row_offsets[i + 1]).
    row_offsets: npt.NDArray[np.int64]
    #: Per input, what each row is (None for CLS_TOKEN rows or with omit_units).
    units: tuple[tuple[Unit, ...], ...] | None
    #: Per input, the text the units' spans index into (None like `units`).
    texts: tuple[str, ...] | None
    #: With include_predictions: [inputs, classes] logits and the argmax of each row.
    logits: npt.NDArray[np.float32] | None
    predicted_classes: npt.NDArray[np.int64] | None

    def rows(self, index: int, split_point: str | None = None) -> npt.NDArray[np.floating]:
        """Input `index`'s rows at `split_point` (default: the only one requested)."""
        if split_point is None:
            if len(self.values) != 1:
                raise ValueError(f"name the split point: one of {list(self.values)}")
            (array,) = self.values.values()
        else:
            array = self.values[split_point]
        start, end = self.row_offsets[index], self.row_offsets[index + 1]
        return array[start:end]


@dataclass(frozen=True, eq=False)
class Predictions:
    """PredictFromActivations' answer: [rows, classes] logits and the argmax of each row."""

    logits: npt.NDArray[np.float32]
    predicted_classes: npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class InlineConceptSet:
    """A concept set sent with the request instead of one the server serves (small sets: a
    concept activation vector, a few directions).

    With pre = (x - encoder_center) encoder_weight^T + encoder_bias, the encoder gives C = pre
    ("linear"), ReLU(pre) ("relu"), its `top_k` largest ("topk"), ReLU(pre) where it reaches
    `encoder_threshold` ("jumprelu"), or the non-negative least squares fit of x on the
    dictionary ("nnls", x through a ReLU first with `relu_input`); the decoder is
    t^-1(C) = C decoder_weight + decoder_bias. Arrays are anything numpy takes (sent as float32).
    A fitted scikit-learn PCA is `InlineConceptSet(encoder_weight=pca.components_,
    encoder_center=pca.mean_, decoder_weight=pca.components_, decoder_bias=pca.mean_)`."""

    #: [concepts, features]: the dictionary D.
    decoder_weight: npt.ArrayLike
    #: "linear", "relu", "topk", "jumprelu" or "nnls".
    encoder: str = "linear"
    #: [concepts, features]: W (every encoder but "nnls").
    encoder_weight: npt.ArrayLike | None = None
    #: [concepts]: b.
    encoder_bias: npt.ArrayLike | None = None
    #: [features]: subtracted from the activations first.
    encoder_center: npt.ArrayLike | None = None
    #: [concepts]: "jumprelu"'s thresholds.
    encoder_threshold: npt.ArrayLike | None = None
    #: "topk": how many concepts are kept per row.
    top_k: int = 0
    #: "nnls": the activations go through a ReLU before the fit.
    relu_input: bool = False
    #: [features].
    decoder_bias: npt.ArrayLike | None = None
    #: One per concept (none: the server names them "concept K").
    labels: Sequence[str] = ()
    #: Where its activations are read: empty, the classification head's input; or a split point
    #: with a token dimension (GetModel lists them).
    split_point: str = ""

    def to_proto(self) -> pb.InlineConceptSet:
        """The `explainserve.v1.InlineConceptSet` message."""
        message = pb.InlineConceptSet(
            split_point=self.split_point,
            encoder=_enum(pb.ConceptEncoder, "CONCEPT_ENCODER", self.encoder),  # type: ignore[arg-type]
            top_k=self.top_k,
            relu_input=self.relu_input,
            labels=list(self.labels),
        )
        for name in (
            "encoder_weight",
            "encoder_bias",
            "encoder_center",
            "encoder_threshold",
            "decoder_weight",
            "decoder_bias",
        ):
            value = getattr(self, name)
            if value is not None:
                getattr(message, name).CopyFrom(encode_tensor(value))
        return message


#: A concept set: the name of one the server serves (`ModelInfo.concept_sets`), or the request's
#: own (an `InlineConceptSet`, or its message).
ConceptSetLike = str | InlineConceptSet | pb.InlineConceptSet


def concept_set_ref(concepts: ConceptSetLike) -> pb.ConceptSetRef:
    """The `explainserve.v1.ConceptSetRef` of a set given by name or inline."""
    if isinstance(concepts, str):
        return pb.ConceptSetRef(name=concepts)
    if isinstance(concepts, InlineConceptSet):
        return pb.ConceptSetRef(inline=concepts.to_proto())
    if isinstance(concepts, pb.InlineConceptSet):
        return pb.ConceptSetRef(inline=concepts)
    raise TypeError(
        f"concepts must be a set's name, an InlineConceptSet or a pb.InlineConceptSet, not "
        f"{type(concepts).__name__}"
    )


@dataclass(frozen=True, eq=False)
class ConceptExplanation(_Predicted):
    """Which concepts drive one input's prediction (ExplainConcepts): the concept activations C
    and, per explained class, their contributions and the terms that add up to the output:
    `outputs = concept_sums + residuals + biases + gaps` (gaps ~ 0 for a linear head in logits
    mode). Per-target values are float32 arrays with one entry per `targets` entry."""

    #: Position of the input in the request.
    input_index: int
    #: The input's text (decoded from its ids for a token-id input).
    text: str
    #: The token ids the model saw.
    token_ids: npt.NDArray[np.int64]
    #: The set's name ("inline" for the request's own) and its concepts' labels (index order).
    concept_set: str
    concept_labels: tuple[str, ...]
    #: The explained classes.
    targets: tuple[ExplainedTarget, ...]
    #: float32 [rows, concepts]: C (one row at the head's input; one per unit of the request's
    #: granularity at a split point with a token dimension).
    concepts: npt.NDArray[np.float32]
    #: What each row is (granularities other than "cls_token"; empty otherwise).
    units: tuple[Unit, ...]
    #: float32 [targets, rows, concepts]: C * gradient (or the gradient alone), normalized to a
    #: unit absolute sum over the rows and concepts of each target unless asked otherwise.
    contributions: npt.NDArray[np.float32]
    #: The target's output (the inference mode's function of the logits).
    outputs: npt.NDArray[np.float32]
    #: What the concepts do not reconstruct: g(h) - g(t^-1(C)).
    residuals: npt.NDArray[np.float32]
    #: The output with every concept off: g(t^-1(0)).
    biases: npt.NDArray[np.float32]
    #: The sum of the raw C * gradient contributions (over rows and concepts).
    concept_sums: npt.NDArray[np.float32]
    #: outputs - (concept_sums + residuals + biases).
    gaps: npt.NDArray[np.float32]
    #: The model's logits for the input and its class labels.
    logits: npt.NDArray[np.float32]
    labels: tuple[str, ...]
    #: |h - t^-1(C)| / |h|: how much of the activations the set does not reconstruct.
    reconstruction_error: float
    #: Work done: sequences through the model, and the server's wall time.
    forward_passes: int
    elapsed_ms: float

    @classmethod
    def from_proto(
        cls,
        explanation: pb.ConceptExplanation,
        concept_set: str = "",
        concept_labels: Sequence[str] = (),
        labels: Sequence[str] = (),
    ) -> ConceptExplanation:
        """The dataclass of a `explainserve.v1.ConceptExplanation` (the set's name and concept
        labels come with the response, `labels` are the model's)."""
        concepts = _matrix(explanation.concepts)
        targets = explanation.targets
        contributions = np.zeros((0, *concepts.shape), dtype=np.float32)
        if targets:
            contributions = np.stack([_matrix(t.contributions) for t in targets])

        def per_target(name: str) -> npt.NDArray[np.float32]:
            return np.array([getattr(t, name) for t in targets], dtype=np.float32)

        return cls(
            input_index=explanation.input_index,
            text=explanation.text,
            token_ids=np.array(explanation.token_ids, dtype=np.int64),
            concept_set=concept_set,
            concept_labels=tuple(concept_labels),
            targets=tuple(ExplainedTarget(t.target.index, t.target.label) for t in targets),
            concepts=concepts,
            units=tuple(Unit.from_proto(u) for u in explanation.units),
            contributions=contributions,
            outputs=per_target("output"),
            residuals=per_target("residual"),
            biases=per_target("bias"),
            concept_sums=per_target("concept_sum"),
            gaps=per_target("gap"),
            logits=np.array(explanation.logits, dtype=np.float32),
            labels=tuple(labels),
            reconstruction_error=explanation.reconstruction_error,
            forward_passes=explanation.counters.forward_passes,
            elapsed_ms=explanation.counters.elapsed_ms,
        )

    def top_concepts(self, target: int = 0, k: int | None = None) -> list[tuple[str, float]]:
        """The `k` concepts (all when None) with the largest |contribution| to `targets[target]`,
        summed over the rows, largest first (ties in index order): (label, signed value)."""
        values = self.contributions[target].sum(axis=0, dtype=np.float32)
        order = np.argsort(-np.abs(values), kind="stable")[:k]
        return [(self.concept_labels[i], float(values[i])) for i in order]


#: A method given by name: its oneof field of ExplainRequest ("occlusion", "integrated_gradients",
#: ...), with the server's default parameters. Derived from the proto, so a new method needs no
#: client change.
_METHOD_FIELDS: Final = {
    f.message_type.full_name: f.name
    for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields
}
_METHOD_TYPES: Final = {
    f.name: f.message_type for f in pb.ExplainRequest.DESCRIPTOR.oneofs_by_name["method"].fields
}


def _enum(enum: object, prefix: str, value: str | int | None) -> int:
    """An enum value from its short name ("word" for GRANULARITY_WORD) or its number."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    name = f"{prefix}_{value.upper()}"
    try:
        return int(enum.Value(name))  # type: ignore[attr-defined]
    except ValueError:
        keys = enum.keys()  # type: ignore[attr-defined]
        names = [n.removeprefix(prefix + "_").lower() for n in keys]
        valid = [n for n in names if n != "unspecified"]
        raise ValueError(f"unknown {prefix.lower()} {value!r}; expected one of {valid}") from None


def _add_targets(field: Any, targets: Sequence[int | str]) -> None:
    """Appends `explainserve.v1.Target`s to a repeated field: a str is a label, an int an index."""
    for target in targets:
        if isinstance(target, str):
            field.add(label=target)
        else:
            field.add(index=target)


def _input_messages(
    inputs: str | pb.Input | Sequence[str | pb.Input], targets: Sequence[int | str]
) -> list[pb.Input]:
    """The request's inputs: one text or `Input`, or a list of them; `targets` go to the texts."""
    if isinstance(inputs, str | pb.Input):
        inputs = [inputs]
    return [text_input(i, targets) if isinstance(i, str) else i for i in inputs]


def text_input(
    text: str, targets: Sequence[int | str] = (), continuation: str | None = None
) -> pb.Input:
    """One input: its text, the classes to explain (indices or labels; none = the predicted
    class) and, for a causal LM, the continuation to explain (None: the server generates it)."""
    message = pb.Input(text=text)
    _add_targets(message.targets, targets)
    if continuation is not None:
        message.continuation.text = continuation
    return message


class Client:
    """A connection to an ExplainService server.

    `target` is "host:port"; `token` is sent as `authorization: Bearer <token>` on every call;
    `tls` is False (plaintext), True (TLS, the system's CAs) or a `Tls`. Each call has a deadline:
    `timeout=` seconds (DEFAULT_TIMEOUT for the calls that run models, METADATA_TIMEOUT for the
    others), None for none. `retry` applies RETRY_POLICY (UNAVAILABLE only). `balance` spreads
    the calls over every address of `target` (`dns:///explainserve-headless:50051`,
    `ipv4:10.0.0.1:50051,10.0.0.2:50051`) with gRPC's round_robin, skipping replicas whose health
    is not SERVING (see `service_config`).
    gRPC errors are raised as `grpc.RpcError` (`.code()`, `.details()`).

    Use it as a context manager, or call `close()`."""

    def __init__(
        self,
        target: str,
        *,
        token: str | None = None,
        tls: bool | Tls = False,
        retry: bool = True,
        balance: bool = False,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        options: Sequence[tuple[str, str | int]] = (),
    ) -> None:
        channel_options: list[tuple[str, str | int]] = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.enable_retries", 1 if retry else 0),
            ("grpc.service_config", service_config(retry, balance)),
        ]
        if isinstance(tls, Tls) and tls.server_name is not None:
            channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
        channel_options.extend(options)
        if tls is False:
            self._channel = grpc.insecure_channel(target, options=channel_options)
        else:
            settings = tls if isinstance(tls, Tls) else Tls()
            credentials = grpc.ssl_channel_credentials(
                root_certificates=settings.root_certificates,
                private_key=settings.private_key,
                certificate_chain=settings.certificate_chain,
            )
            self._channel = grpc.secure_channel(target, credentials, options=channel_options)
        self._stub = explain_pb2_grpc.ExplainServiceStub(self._channel)  # type: ignore[no-untyped-call]
        self._metadata = (("authorization", f"Bearer {token}"),) if token is not None else None
        self._labels: dict[str, tuple[str, ...]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel (calls in flight are cancelled)."""
        self._channel.close()

    @property
    def stub(self) -> explain_pb2_grpc.ExplainServiceStub:
        """The generated stub on this client's channel, for what the helpers do not cover (pass
        `metadata` yourself when the server wants a token)."""
        return self._stub

    def list_models(self, *, timeout: float | None = METADATA_TIMEOUT) -> list[ModelInfo]:
        """Every model the server has loaded."""
        reply = self._stub.ListModels(
            pb.ListModelsRequest(), timeout=timeout, metadata=self._metadata
        )
        return [ModelInfo.from_proto(m) for m in reply.models]

    def get_model(self, name: str, *, timeout: float | None = METADATA_TIMEOUT) -> ModelInfo:
        """One model's metadata (NOT_FOUND when the server has no such model)."""
        reply = self._stub.GetModel(
            pb.GetModelRequest(name=name), timeout=timeout, metadata=self._metadata
        )
        info = ModelInfo.from_proto(reply.model)
        self._labels[name] = info.labels
        return info

    def _model_labels(self, name: str) -> tuple[str, ...]:
        if name not in self._labels:
            self.get_model(name)
        return self._labels[name]

    def explain_request(
        self,
        model: str,
        inputs: str | pb.Input | Sequence[str | pb.Input],
        *,
        method: str | Message = "occlusion",
        targets: Sequence[int | str] = (),
        granularity: str | int | None = None,
        aggregation: str | int | None = None,
        inference_mode: str | int | None = None,
        seed: int = 0,
        generation: pb.Generation | None = None,
        prompt_units_only: bool = False,
        truncate: bool = False,
        isolate_batches: bool = False,
        concepts: ConceptSetLike | None = None,
        concepts_explained: Sequence[int | str] = (),
    ) -> pb.ExplainRequest:
        """The ExplainRequest that `explain` sends (see there)."""
        request = pb.ExplainRequest(
            model=model,
            inputs=_input_messages(inputs, targets),
            granularity=_enum(pb.Granularity, "GRANULARITY", granularity),  # type: ignore[arg-type]
            aggregation=_enum(pb.Aggregation, "AGGREGATION", aggregation),  # type: ignore[arg-type]
            inference_mode=_enum(pb.InferenceMode, "INFERENCE_MODE", inference_mode),  # type: ignore[arg-type]
            seed=seed,
            prompt_units_only=prompt_units_only,
            truncate=truncate,
            isolate_batches=isolate_batches,
        )
        if generation is not None:
            request.generation.CopyFrom(generation)
        if isinstance(method, str):
            if method not in _METHOD_TYPES:
                raise ValueError(
                    f"unknown method {method!r}; expected one of {list(_METHOD_TYPES)}"
                )
            getattr(request, method).SetInParent()
        else:
            field = _METHOD_FIELDS.get(method.DESCRIPTOR.full_name)
            if field is None:
                raise ValueError(f"{method.DESCRIPTOR.full_name} is not an explanation method")
            getattr(request, field).CopyFrom(method)
        if concepts is not None:
            request.concept_target.concepts.CopyFrom(concept_set_ref(concepts))
            _add_targets(request.concept_target.concepts_explained, concepts_explained)
        elif concepts_explained:
            raise ValueError("concepts_explained needs concepts: the set they belong to")
        return request

    def explain(
        self,
        model: str,
        inputs: str | pb.Input | Sequence[str | pb.Input],
        *,
        method: str | Message = "occlusion",
        targets: Sequence[int | str] = (),
        granularity: str | int | None = None,
        aggregation: str | int | None = None,
        inference_mode: str | int | None = None,
        seed: int = 0,
        generation: pb.Generation | None = None,
        prompt_units_only: bool = False,
        truncate: bool = False,
        isolate_batches: bool = False,
        concepts: ConceptSetLike | None = None,
        concepts_explained: Sequence[int | str] = (),
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> list[Explanation]:
        """Explains `inputs` (a text, an `Input` from `text_input`, or a list of them) with
        `method`: a name ("occlusion", "lime", "integrated_gradients", ... with the server's
        default parameters) or a method message (`pb.Lime(n_perturbations=64)`). `targets`
        applies to the inputs given as plain text (none: the predicted class). Enums are given
        by their short names ("word", "sum", "softmax") or numbers; None is the server default.
        Inputs -> concepts: with `concepts` (a served set's name or an `InlineConceptSet`), the
        explained outputs are that set's concepts instead of classes, `concepts_explained` of
        them (indices or labels; none: each input's most activated concept), and `targets` must
        be empty. `timeout`: seconds, None for no deadline. Returns one Explanation per input,
        in order."""
        request = self.explain_request(
            model,
            inputs,
            method=method,
            targets=targets,
            granularity=granularity,
            aggregation=aggregation,
            inference_mode=inference_mode,
            seed=seed,
            generation=generation,
            prompt_units_only=prompt_units_only,
            truncate=truncate,
            isolate_batches=isolate_batches,
            concepts=concepts,
            concepts_explained=concepts_explained,
        )
        labels = self._model_labels(model)
        reply = self._stub.Explain(request, timeout=timeout, metadata=self._metadata)
        return [Explanation.from_proto(e, labels) for e in reply.explanations]

    def explain_stream(
        self, request: pb.ExplainRequest, *, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Iterator[Progress | Explanation]:
        """ExplainStream: progress events and each input's explanation as soon as it is ready
        (in the order they finish: see `Explanation.input_index`). Build the request with
        `explain_request`."""
        labels = self._model_labels(request.model)
        stream = self._stub.ExplainStream(
            pb.ExplainStreamRequest(request=request),
            timeout=timeout,
            metadata=self._metadata,
        )
        for event in stream:
            if event.HasField("progress"):
                yield Progress(
                    event.progress.forward_passes_done, event.progress.forward_passes_total
                )
            else:
                yield Explanation.from_proto(event.explanation, labels)

    def explain_concepts(
        self,
        model: str,
        inputs: str | pb.Input | Sequence[str | pb.Input],
        *,
        concepts: ConceptSetLike,
        targets: Sequence[int | str] = (),
        inference_mode: str | int | None = None,
        concepts_x_gradients: bool = True,
        normalization: bool = True,
        granularity: str | int | None = None,
        aggregation: str | int | None = None,
        truncate: bool = False,
        isolate_batches: bool = False,
        priority: str | int | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> list[ConceptExplanation]:
        """Which concepts of a concept set drive the predictions of `inputs` (as in `explain`):
        `concepts` is the name of a set the server serves for `model` (`get_model(model)
        .concept_sets`) or an `InlineConceptSet`. `targets` are classes (none: the predicted
        class), for the inputs given as plain text; `inference_mode` ("logits", "softmax",
        "log_softmax") is the function of the logits explained. Contributions are C * gradient
        (`concepts_x_gradients=False`: the gradient alone), divided by their absolute sum per
        target (`normalization=False`: raw). `granularity` is the rows concepts are read at:
        "cls_token" at the head's input (one row, the default); at a split point with a token
        dimension also "all_tokens", "token", "word" or "sentence" (default: what the set was
        fitted at), a word's or sentence's row made of its tokens by `aggregation` ("mean", the
        default, ...). `priority`: "interactive" or "batch". Returns one ConceptExplanation per
        input, in order."""
        # Both flags are sent even at their defaults (the fields are optional: unset is true).
        request = pb.ExplainConceptsRequest(
            model=model,
            inputs=_input_messages(inputs, targets),
            concepts=concept_set_ref(concepts),
            inference_mode=_enum(pb.InferenceMode, "INFERENCE_MODE", inference_mode),  # type: ignore[arg-type]
            concepts_x_gradients=concepts_x_gradients,
            normalization=normalization,
            granularity=_enum(pb.ActivationGranularity, "ACTIVATION_GRANULARITY", granularity),  # type: ignore[arg-type]
            aggregation=_enum(pb.Aggregation, "AGGREGATION", aggregation),  # type: ignore[arg-type]
            truncate=truncate,
            isolate_batches=isolate_batches,
            priority=_enum(pb.Priority, "PRIORITY", priority),  # type: ignore[arg-type]
        )
        labels = self._model_labels(model)
        reply = self._stub.ExplainConcepts(request, timeout=timeout, metadata=self._metadata)
        return [
            ConceptExplanation.from_proto(e, reply.concept_set, reply.concept_labels, labels)
            for e in reply.explanations
        ]

    def activations(
        self,
        model: str,
        inputs: str | pb.Input | Sequence[str | pb.Input],
        *,
        split_points: Sequence[str] = (),
        granularity: str | int | None = None,
        aggregation: str | int | None = None,
        dtype: str = "float32",
        include_predictions: bool = False,
        omit_units: bool = False,
        truncate: bool = False,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Activations:
        """Latent activations of `inputs` at `split_points` (none: the classification head's
        input), one row per input by default (granularity "cls_token"; "all_tokens", "token",
        "word", "sentence" give ragged rows: see `Activations.rows`). `dtype` is the type on the
        wire ("float32", "float16", "bfloat16"; bfloat16 comes back as float32, exactly)."""
        messages = _input_messages(inputs, ())
        request = pb.GetActivationsRequest(
            model=model,
            inputs=messages,
            split_points=list(split_points),
            granularity=_enum(pb.ActivationGranularity, "ACTIVATION_GRANULARITY", granularity),  # type: ignore[arg-type]
            aggregation=_enum(pb.Aggregation, "AGGREGATION", aggregation),  # type: ignore[arg-type]
            dtype=dtype,
            include_predictions=include_predictions,
            omit_units=omit_units,
            truncate=truncate,
        )
        stream = self._stub.GetActivations(request, timeout=timeout, metadata=self._metadata)
        parts: dict[str, list[npt.NDArray[np.floating]]] = {}
        offsets = [0]
        units: dict[int, tuple[Unit, ...]] = {}
        texts: dict[int, str] = {}
        logits: list[npt.NDArray[np.floating]] = []
        predicted: list[int] = []
        for chunk in stream:
            base = offsets[-1]
            offsets.extend(base + int(o) for o in chunk.row_offsets[1:])
            for split in chunk.activations:
                parts.setdefault(split.split_point, []).append(decode_tensor(split.values))
            for entry in chunk.units:
                units[entry.input_index] = tuple(Unit.from_proto(u) for u in entry.units)
                texts[entry.input_index] = entry.text
            if chunk.HasField("logits"):
                logits.append(decode_tensor(chunk.logits))
            predicted.extend(chunk.predicted_classes)
        n = len(messages)
        if len(offsets) != n + 1:
            raise RuntimeError(f"the server answered for {len(offsets) - 1} of {n} inputs")
        has_units = len(units) == n
        return Activations(
            values={name: np.concatenate(arrays) for name, arrays in parts.items()},
            row_offsets=np.array(offsets, dtype=np.int64),
            units=tuple(units[i] for i in range(n)) if has_units else None,
            texts=tuple(texts[i] for i in range(n)) if has_units else None,
            logits=np.concatenate(logits).astype(np.float32) if include_predictions else None,
            predicted_classes=np.array(predicted, dtype=np.int64) if include_predictions else None,
        )

    def predict_from_activations(
        self,
        model: str,
        activations: npt.ArrayLike,
        *,
        dtype: str = "float32",
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Predictions:
        """The classification head applied to `activations` at its input ([rows, features],
        e.g. edited `activations(...)` rows), sent as `dtype` ("float32" or "float16")."""
        reply = self._stub.PredictFromActivations(
            pb.PredictFromActivationsRequest(
                model=model, activations=encode_tensor(activations, dtype)
            ),
            timeout=timeout,
            metadata=self._metadata,
        )
        return Predictions(
            logits=decode_tensor(reply.logits).astype(np.float32),
            predicted_classes=np.array(reply.predicted_classes, dtype=np.int64),
        )
