{#- Use the configured schema name as is (staging, analytics) instead of dbt's
    "<target schema>_<custom schema>" so the tables are easy to find in the warehouse. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {{ custom_schema_name if custom_schema_name else target.schema }}
{%- endmacro %}
