"""audience-sync in a data team's pipeline: dbt exposures, Dagster assets and an Airflow operator, each built on
``sync.api``. Dagster and Airflow are optional extras (``audience-sync[dagster]``, ``audience-sync[airflow]``)."""
