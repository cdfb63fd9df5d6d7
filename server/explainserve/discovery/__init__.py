"""Client-side tools for concept sets (`explainserve concepts ...`): import fitted dictionaries
of other tools, show a concept set file. They talk to a running server over gRPC and import no
torch unless the object they read is a torch one."""
