"""HTTP/JSON beside gRPC: the Open Inference Protocol's REST form, KServe's V1 protocol and
every ExplainService RPC as JSON, served by the same servicers as gRPC (see `app`)."""
