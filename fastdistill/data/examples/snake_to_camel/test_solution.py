from solution import snake_to_camel

def test_convert():
    assert snake_to_camel("hello_world") == "helloWorld"
    assert snake_to_camel("make_it_work_now") == "makeItWorkNow"

def test_edges():
    assert snake_to_camel("single") == "single"
    assert snake_to_camel("_private_name_") == "privateName"
    assert snake_to_camel("___") == ""
    assert snake_to_camel("Upper_case") == "upperCase"
