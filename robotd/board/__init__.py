"""The servo board: its wire protocol (:mod:`.protocol`) and the serial link (:mod:`.link`)."""
