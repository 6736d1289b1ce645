"""LAION-Face: filtering laion400m metadata to face ids, download, released and own detections."""
