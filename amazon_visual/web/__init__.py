"""Pages: the HTML report of a demo or a set of runs (:mod:`.report`) and look-alike
galleries (:mod:`.gallery`)."""
