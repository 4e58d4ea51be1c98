"""Code shared by every meshserve service: settings, logging, errors, gRPC helpers,
storage URIs, model ids. Generated protobuf modules live in `meshserve.common.proto`
(made by `make proto`, never edited by hand)."""
