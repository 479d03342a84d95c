"""Glass curtain-wall risk (玻璃幕墙): "一楼一档" dossiers per building (:mod:`.records`), a transparent,
versioned scoring model kept in a file (:mod:`.model`, ``model.toml``), scored set-based with reasons
(:mod:`.inputs`, :mod:`.scoring`), the inspection schedule of 沪府令77号 (:mod:`.schedule`), inspection cases
pushed through the case loop and their outcomes and precision (:mod:`.push`), the sample city's synthetic
dossiers (:mod:`.feed`) and ``cim scenarios curtain-wall …`` (:mod:`.cli`). See docs/scenarios.md."""
