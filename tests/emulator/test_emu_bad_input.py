"""Malformed input to the round-two surfaces gets a Dataverse-shaped 4xx, never a 500."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from tests.emulator.conftest import Api, error

FETCHES = [
    '<fetch count="abc"><entity name="lead"/></fetch>',
    '<fetch><entity name="lead"><order alias="zz"/></entity></fetch>',
    '<fetch><entity name="lead"><filter><condition operator="eq" value="1"/></filter></entity></fetch>',
    '<fetch><entity name="lead"><filter><condition attribute="statecode" operator="eq"/></filter></entity></fetch>',
    '<fetch><entity name="lead"><filter><condition attribute="statecode" operator="in"/></filter></entity></fetch>',
    '<fetch><entity name="lead"><link-entity name="contact"/></entity></fetch>',
    '<fetch aggregate="true"><entity name="lead"/></fetch>',
    '<fetch aggregate="true"><entity name="lead"><attribute name="leadid"/></entity></fetch>',
    '<fetch><entity name="lead"><filter type="xor"/></entity></fetch>',
    "<fetch><entity/></fetch>",
    "<fetch><entity name='lead'>\x00</entity></fetch>",
]
FILTERS = [
    "Microsoft.Dynamics.CRM.In(PropertyName='statecode',PropertyValues=[])",
    "Microsoft.Dynamics.CRM.In(PropertyName='statecode',PropertyValues=[1,2])",
    "Microsoft.Dynamics.CRM.In(PropertyName='statecode',PropertyValues=[\"1\",null])",
    "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=99999999999)",
    "Microsoft.Dynamics.CRM.LastXDays(PropertyName='createdon',PropertyValue=1,Extra=2)",
    "Microsoft.Dynamics.CRM.LastXDays('createdon',1)",
    "Microsoft.Dynamics.CRM.EqualUserId(PropertyName='subject')",
    "Microsoft.Dynamics.CRM.Today(PropertyName='createdon') eq true",
    "statecode in []",
]
APPLIES = [
    "groupby(",
    "aggregate()",
    "filter(statecode eq 0)",
    "groupby((statecode))/groupby((statuscode))",
]


@pytest.mark.parametrize(
    "path",
    [f"leads?fetchXml={quote(f, safe='')}" for f in FETCHES]
    + [f"leads?$filter={quote(f, safe='')}" for f in FILTERS]
    + [f"leads?$apply={quote(a, safe='')}" for a in APPLIES]
    + ["contacts(emailaddress1=)", "contacts(='a')", "contacts(contactid=nope)", "savedqueries(x)"],
)
def test_malformed_reads_get_a_client_error(web: Api, path: str) -> None:
    status, code, message = error(web.get(path))
    assert 400 <= status < 500
    assert code.startswith("0x")
    assert message


def test_malformed_key_definitions_and_publishing_get_a_client_error(web: Api) -> None:
    for body in ({}, {"SchemaName": 5}, {"SchemaName": "x", "KeyAttributes": "emailaddress1"}, [1]):
        assert error(web.post("EntityDefinitions(LogicalName='contact')/Keys", body))[0] == 400
    for body in ({}, {"ParameterXml": 5}, {"ParameterXml": "<a/>"}):
        assert error(web.post("PublishXml", body))[0] == 400
