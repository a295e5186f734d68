"""What both services share: settings, logging, errors, page tokens and the gRPC server shell."""
