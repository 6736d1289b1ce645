"""Identity clusters: exact cosine DBSCAN (:mod:`.dbscan`), nearest-neighbour similarity analysis
(:mod:`.nn_similarity`) and the identity-cluster stage for any embedding table (:mod:`.identity_clusters`)."""
