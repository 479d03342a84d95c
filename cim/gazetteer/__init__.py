"""The unified address gazetteer (统一地名地址库): normalise and parse Chinese addresses, geocode
them through the door → interpolated → road → community → street → district cascade, reverse
geocode points, and geocode CSV files in streaming batches.

    from cim.gazetteer import geocode, reverse, parse_address, normalize
    with engine.connect() as conn:
        answer = geocode(conn, "上海徐汇区汾阳路150号")
        answer.match_level, answer.score, answer.x, answer.y, answer.assignment.grid
"""
from cim.gazetteer.batch import BatchSummary, geocode_csv
from cim.gazetteer.dictionary import AddressDictionary
from cim.gazetteer.geocode import (MATCH_LEVELS, Candidate, GeocodeResult, gazetteer_for, geocode,
                                   geocode_many)
from cim.gazetteer.normalize import Normalized, normalize
from cim.gazetteer.parse import ParsedAddress, parse_address
from cim.gazetteer.reverse import DEFAULT_RADIUS_M, MAX_RADIUS_M, NearestAddress, ReverseResult, reverse

__all__ = [
    "AddressDictionary", "BatchSummary", "Candidate", "DEFAULT_RADIUS_M", "GeocodeResult", "MATCH_LEVELS",
    "MAX_RADIUS_M", "NearestAddress", "Normalized", "ParsedAddress", "ReverseResult", "gazetteer_for",
    "geocode", "geocode_csv", "geocode_many", "normalize", "parse_address", "reverse",
]
