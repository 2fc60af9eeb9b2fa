"""One run of one job: its lifecycle (``runner``), its lease, its sending (``delivery``), its report and the
alerts its end raises."""
