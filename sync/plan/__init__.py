"""Planning: the acknowledged state × the snapshot → changes (``diff``), checked (``guard``), turned into one
update per changed subject (``updates``), batch by batch (``planner``)."""
