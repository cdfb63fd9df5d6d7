"""ExplainServe's light Python client: grpcio, protobuf and numpy, no torch.

    from explainserve_client import Client

    with Client("127.0.0.1:50051") as client:
        (e,) = client.explain("minilm-sentiment", "The food was cold.")
        print(e.predicted_label, dict(zip(e.unit_texts, e.scores[0])))

`explainserve_client.v1` holds the generated protobuf and gRPC code (`explain_pb2`,
`explain_pb2_grpc`), the same as the server's `explainserve.v1`.
"""

from explainserve_client.client import (
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    METADATA_TIMEOUT,
    RETRY_POLICY,
    Activations,
    Client,
    ConceptExplanation,
    ConceptSetInfo,
    ConceptSetLike,
    ExplainedTarget,
    Explanation,
    InlineConceptSet,
    ModelInfo,
    Predictions,
    Progress,
    SplitPoint,
    Tls,
    Unit,
    concept_set_ref,
    service_config,
    text_input,
)
from explainserve_client.tensors import decode_tensor, encode_tensor
from explainserve_client.v1 import explain_pb2 as pb

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_MESSAGE_BYTES",
    "METADATA_TIMEOUT",
    "RETRY_POLICY",
    "Activations",
    "Client",
    "ConceptExplanation",
    "ConceptSetInfo",
    "ConceptSetLike",
    "ExplainedTarget",
    "Explanation",
    "InlineConceptSet",
    "ModelInfo",
    "Predictions",
    "Progress",
    "SplitPoint",
    "Tls",
    "Unit",
    "concept_set_ref",
    "decode_tensor",
    "encode_tensor",
    "pb",
    "service_config",
    "text_input",
]
