"""{% site_health_of site as health %}: for the banner every page of a site shows when it is in trouble."""

from django import template

from jobs.services.site_health import site_health

register = template.Library()


@register.simple_tag
def site_health_of(site):
    return site_health(site) if site is not None and getattr(site, "pk", None) else None
