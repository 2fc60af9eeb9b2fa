"""Reading back what runs changed and sent: queries, ``status``, tables and exports, the HTML report."""
