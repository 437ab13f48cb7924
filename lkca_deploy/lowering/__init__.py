"""Graph passes that rewrite the large-kernel conv into ops a target runs well: one rule per way of writing it
(rules/, listed in registry.py), the conv sites they rewrite (sites.py), and applying them (apply.py). Choosing a
rule per conv is lkca_deploy.planning; the op forms for older parsers are lkca_deploy.forms."""
