"""Group rental (群租): monthly utility use, registered population and deliveries per address
(:mod:`.loader`), a transparent suspicion score with its reasons from a model file (:mod:`.model`,
:mod:`.score`), and the flagged addresses' cases at the street's 平安办 with the door visit,
rectification and re-verification (督办) loop (:mod:`.cases`). See docs/scenarios.md."""
