# inspircd linked to atheme-services: real SASL PLAIN, NickServ and +c for the IRC tests (tests/ircservices.py).
APT_PACKAGES="$APT_PACKAGES inspircd atheme-services"
