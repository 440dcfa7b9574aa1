"""The ``tls-alpn-01`` challenge type for the ``acme`` library, which no longer ships it:
registered with its registries so that authorizations offering it parse into it."""

from __future__ import annotations

from typing import Any

from acme import challenges
from josepy.jwk import JWK


@challenges.ChallengeResponse.register
class TLSALPN01Response(challenges.KeyAuthorizationChallengeResponse):
    typ = "tls-alpn-01"


@challenges.Challenge.register
class TLSALPN01(challenges.KeyAuthorizationChallenge):
    response_cls = TLSALPN01Response
    typ = response_cls.typ

    def validation(self, account_key: JWK, **kwargs: Any) -> str:
        """The key authorization; its digest goes into the validation certificate."""
        return self.key_authorization(account_key)
