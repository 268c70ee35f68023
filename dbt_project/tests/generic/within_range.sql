{#- Fails with one row per value outside [min_value, max_value]; NULLs are left to not_null.
    Plain dbt, so no package (dbt_utils) has to be fetched. -#}
{% test within_range(model, column_name, min_value=0, max_value=1) %}
select *
from {{ model }}
where {{ column_name }} is not null
  and (isnan({{ column_name }}) or {{ column_name }} < {{ min_value }} or {{ column_name }} > {{ max_value }})
{% endtest %}
