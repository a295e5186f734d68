"""tracking_service: the phone streams GPS points; every point lands in the CQL store."""
